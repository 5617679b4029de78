/**
 * Typed client for the server extension's REST routes under /fedjax-room/.
 *
 * Every call goes through ServerConnection.makeRequest, which adds the token and the XSRF header, so
 * the routes can all require authentication.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface IRoomInfo {
  id: string;
  url: string;
  kind: 'demo' | 'remote';
  label: string;
  site_names: string[];
  dataset?: string | null;
  error?: string | null;
}

export interface IStatus {
  version: string;
  rooms: IRoomInfo[];
  active: boolean;
  default_url?: string;
}

export interface ISite {
  name: string;
  status: string;
  record_count: string;
  schema: Record<string, unknown>;
  policy: Record<string, unknown>;
  schema_summary: string;
  policy_summary: string;
}

export interface IRound {
  round: number;
  sites: string[];
  dropped: string[];
  loss: number | null;
  accuracy: number | null;
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
  /** sites whose data owner has not approved the model yet ("waiting for approval by <site>") */
  waiting?: string[];
}

export interface IBudgetRow {
  site: string;
  epsilon_spent: number | null;
  epsilon_cap: number | null;
  delta: number | null;
  remaining: number | null;
}

export type AuditRecord = Record<string, unknown>;

/** One room's state, as the sidebar polls it (GET /fedjax-room/rooms/<id>). */
export interface ISnapshot {
  room: IRoomInfo;
  sites: ISite[];
  runs: IRun[];
  budget: IBudgetRow[];
  audit: AuditRecord[];
  active: boolean;
  errors: Record<string, string>;
}

/** The error a route answered with, message ready for a person. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/** Call one route; `endPoint` is relative to /fedjax-room/. */
export async function requestAPI<T>(endPoint = '', init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'fedjax-room', endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = null;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text };
    }
  }
  if (!response.ok) {
    const message = (data && (data.message || data.reason)) || response.statusText;
    throw new ApiError(String(message), response.status);
  }
  return data as T;
}

function post<T>(endPoint: string, body: unknown): Promise<T> {
  return requestAPI<T>(endPoint, { method: 'POST', body: JSON.stringify(body) });
}

export const api = {
  status: (): Promise<IStatus> => requestAPI<IStatus>('status'),
  snapshot: (room: string): Promise<ISnapshot> => requestAPI<ISnapshot>(`rooms/${encodeURIComponent(room)}`),
  connect: (url: string, key: string): Promise<IRoomInfo> => post<IRoomInfo>('rooms', { url, key }),
  startDemo: (sites: number, dataset: string): Promise<IRoomInfo> =>
    post<IRoomInfo>('rooms/demo', { sites, dataset }),
  disconnect: (room: string): Promise<unknown> =>
    requestAPI(`rooms/${encodeURIComponent(room)}`, { method: 'DELETE' }),
  startRun: (room: string, options: Record<string, unknown>): Promise<IRun> =>
    post<IRun>(`rooms/${encodeURIComponent(room)}/runs`, options),
  cancelRun: (room: string, run: string, reason: string): Promise<IRun> =>
    post<IRun>(`rooms/${encodeURIComponent(room)}/runs/${encodeURIComponent(run)}/cancel`, { reason }),
  dashboardNotebook: (room: string, run: string | null): Promise<{ path: string; created: boolean }> =>
    post(`rooms/${encodeURIComponent(room)}/notebook`, { run })
};
