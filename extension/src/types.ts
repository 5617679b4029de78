/**
 * The JSON the server extension answers (REST) and pushes (the /fedjax-room/events websocket).
 *
 * Types only: no runtime import, so the renderers that use them test without JupyterLab.
 */

export interface IRoomInfo {
  id: string;
  url: string;
  kind: 'demo' | 'remote';
  label: string;
  site_names: string[];
  dataset?: string | null;
  created?: number;
  state_dir?: string | null;
  /** 'sidebar': connected or started here (✕ closes it); 'notebook': a kernel's room, shown while it is open */
  origin?: 'sidebar' | 'notebook';
  /** the notebooks whose kernels are connected to this room */
  notebooks?: string[];
  /** how many kernel connections name this room */
  kernels?: number;
  /** the coordinator's room id */
  room_id?: string | null;
  /** the line that connects a notebook to this room: room = fedjax_room.attach('room-1') */
  attach?: string;
}

export interface IStatus {
  version: string;
  rooms: IRoomInfo[];
  active: boolean;
  /** e.g. a notebook's room the server could not connect to */
  notices?: string[];
}

export interface ISite {
  name: string;
  status: string;
  record_count: string;
  schema: Record<string, unknown>;
  policy: Record<string, unknown>;
  schema_summary: string;
  policy_summary: string;
  /** the policy as [label, value] pairs a person reads ("ε cap", "10") */
  policy_items?: [string, string][];
}

export interface IRound {
  round: number;
  sites: string[];
  dropped: string[];
  loss: number | null;
  accuracy: number | null;
  /** the noise scale (one standard deviation) of the released accuracy; null when nothing was released */
  accuracy_std?: number | null;
  /** whether the round was on the evaluation schedule (eval_every; the last round always is) */
  evaluated?: boolean;
  epsilon: Record<string, number>;
  /** the round's poisoning-defence report (flagged {site: reasons}, excluded, trust, ...); null if none */
  defence?: { flagged?: Record<string, string[]>; excluded?: string[] } | null;
}

export interface IRefusal {
  site: string;
  reason: string;
  message: string;
}

export interface IRun {
  id: string;
  spec_hash: string;
  status: string;
  rounds_done: number;
  rounds: number;
  history: IRound[];
  refusals: IRefusal[];
  error: string | null;
  started_here: boolean;
  /** whether the server follows this run (live, started here, or asked for): history etc. are known */
  followed?: boolean;
  /** sites whose data owner has not approved the model yet ("waiting for approval by <site>") */
  waiting?: string[];
  /** which protections the run has (fedjax_room.protocol.config.protections), when the server knows its config */
  protections?: string[];
}

export interface IBudgetRow {
  site: string;
  epsilon_spent: number | null;
  epsilon_cap: number | null;
  delta: number | null;
  remaining: number | null;
  /** each run's own epsilon (as the site reported it) */
  runs?: Record<string, number>;
  /** the line saying the composed epsilon is tighter than the sum of the runs' (empty below two runs) */
  note?: string;
}

export type AuditRecord = Record<string, unknown>;

/** One room's state (GET /fedjax-room/rooms/<id>). */
export interface ISnapshot {
  room: IRoomInfo;
  sites: ISite[];
  runs: IRun[];
  budget: IBudgetRow[];
  audit: AuditRecord[];
  active: boolean;
  errors: Record<string, string>;
}

/** One run option (GET /fedjax-room/options; fedjax_room.protocol.config.options_schema). */
export interface IOption {
  name: string;
  type: 'int' | 'float' | 'bool' | 'str';
  default: number | string | boolean | null;
  help: string;
  group?: string;
  nullable?: boolean;
  minimum?: number | null;
  maximum?: number | null;
  exclusive_minimum?: boolean;
  choices?: string[] | null;
  basic?: boolean;
}

export interface IOptionsSchema {
  version?: number;
  options: IOption[];
  groups?: string[];
  one_of?: string[][];
  /** the built-in datasets a demo room can hold */
  datasets?: string[];
  /** the model families a run can be started with ({"model": family}; built from the sites' schema) */
  families?: string[];
  /** the most sites a demo room may have */
  max_demo_sites?: number;
}

/** What the websocket pushes; see fedjax_room/jupyter/server/live.py. */
export type ServerMessage =
  | { type: 'hello'; version: string; limits: Record<string, number> }
  | {
      type: 'rooms';
      rooms: IRoomInfo[];
      active: boolean;
      notices?: string[];
    }
  | {
      type: 'snapshot';
      room: string;
      info: IRoomInfo;
      sites: ISite[];
      runs: IRun[];
      budget: IBudgetRow[];
      audit: AuditRecord[];
      errors: Record<string, string>;
    }
  | { type: 'sites'; room: string; sites: ISite[] }
  | { type: 'runs'; room: string; runs: IRun[] }
  | { type: 'budget'; room: string; budget: IBudgetRow[] }
  | { type: 'audit'; room: string; audit: AuditRecord[] }
  | {
      type: 'run';
      room: string;
      run: IRun;
      event: Record<string, unknown> | null;
    }
  | { type: 'room_error'; room: string; part: string; message: string }
  | { type: 'error'; message: string };
