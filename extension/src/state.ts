/**
 * The sidebar's model: the rooms and what the server pushed about each, and a reducer that applies one
 * websocket message and says which rooms it changed (so only those are redrawn).
 *
 * Pure: no DOM, no network.
 */
import {
  AuditRecord,
  IBudgetRow,
  IRoomInfo,
  IRun,
  ISite,
  ISnapshot,
  ServerMessage
} from './types';

export interface IRoomState {
  info: IRoomInfo;
  sites: ISite[];
  runs: IRun[];
  budget: IBudgetRow[];
  audit: AuditRecord[];
  errors: Record<string, string>;
  /** false until the room's snapshot arrived */
  loaded: boolean;
}

export interface IState {
  /** false until the first rooms list arrived */
  loaded: boolean;
  /** the connection's trouble, for a person; null when live */
  error: string | null;
  /** the last message the server refused from this client */
  notice: string | null;
  /** what the server could not do by itself (a notebook's room it cannot reach) */
  notices?: string[];
  /** a long action in progress ("Starting a demo room…"), shown with a spinner; null when none */
  busy?: string | null;
  rooms: IRoomState[];
}

/** What one message changed: the room list itself, and/or these rooms' contents. */
export interface IChange {
  rooms: boolean;
  changed: Set<string>;
}

export function emptyState(): IState {
  return {
    loaded: false,
    error: null,
    notice: null,
    notices: [],
    busy: null,
    rooms: []
  };
}

function emptyRoom(info: IRoomInfo): IRoomState {
  return {
    info,
    sites: [],
    runs: [],
    budget: [],
    audit: [],
    errors: {},
    loaded: false
  };
}

export function isActive(run: IRun): boolean {
  return run.status === 'pending' || run.status === 'running';
}

/** Whether any room has a run pending or running. */
export function anyActive(state: IState): boolean {
  return state.rooms.some(r => r.runs.some(isActive));
}

/** ``runs`` with ``run`` put in place of the one with its id (or added at the end). */
export function upsertRun(runs: IRun[], run: IRun): IRun[] {
  const index = runs.findIndex(r => r.id === run.id);
  if (index < 0) {
    return [...runs, run];
  }
  const out = runs.slice();
  out[index] = run;
  return out;
}

/** A fresh run list, keeping the details of runs the new list only summarises (``followed`` false). */
export function mergeRuns(old: IRun[], fresh: IRun[]): IRun[] {
  const known = new Map(old.map(r => [r.id, r]));
  return fresh.map(run => {
    const before = known.get(run.id);
    if (!run.followed && before?.followed && before.status === run.status) {
      return before;
    }
    return run;
  });
}

/** Apply one REST snapshot (the fallback when the websocket cannot connect). */
export function applySnapshot(state: IState, snap: ISnapshot): IChange {
  return applyMessage(state, {
    type: 'snapshot',
    room: snap.room.id,
    info: snap.room,
    sites: snap.sites,
    runs: snap.runs,
    budget: snap.budget,
    audit: snap.audit,
    errors: snap.errors
  });
}

/** Apply ``msg`` to ``state`` (in place) and say what changed. */
export function applyMessage(state: IState, msg: ServerMessage): IChange {
  const change: IChange = { rooms: false, changed: new Set() };
  const find = (id: string): IRoomState | undefined =>
    state.rooms.find(r => r.info.id === id);
  switch (msg.type) {
    case 'hello':
      state.error = null;
      return change;
    case 'error':
      state.notice = msg.message;
      change.rooms = true;
      return change;
    case 'rooms': {
      const before = state.loaded
        ? state.rooms.map(r => r.info.id).join(',')
        : null;
      state.rooms = msg.rooms.map(info => {
        const room = find(info.id) ?? emptyRoom(info);
        room.info = info;
        return room;
      });
      state.loaded = true;
      const notices = (msg.notices ?? []).join('\n');
      change.rooms =
        before !== state.rooms.map(r => r.info.id).join(',') ||
        notices !== (state.notices ?? []).join('\n');
      state.notices = msg.notices ?? [];
      msg.rooms.forEach(info => change.changed.add(info.id));
      return change;
    }
    case 'snapshot': {
      let room = find(msg.room);
      if (!room) {
        room = emptyRoom(msg.info);
        state.rooms.push(room);
        change.rooms = true;
      }
      room.info = msg.info;
      room.sites = msg.sites;
      room.runs = msg.runs;
      room.budget = msg.budget;
      room.audit = msg.audit;
      room.errors = { ...msg.errors };
      room.loaded = true;
      state.loaded = true;
      change.changed.add(msg.room);
      return change;
    }
    case 'room_error': {
      const room = find(msg.room);
      if (room) {
        room.errors = { ...room.errors, [msg.part]: msg.message };
        change.changed.add(msg.room);
      }
      return change;
    }
    default:
      break;
  }
  const room = find(msg.room);
  if (!room) {
    return change;
  }
  switch (msg.type) {
    case 'sites':
      room.sites = msg.sites;
      break;
    case 'runs':
      room.runs = mergeRuns(room.runs, msg.runs);
      break;
    case 'budget':
      room.budget = msg.budget;
      break;
    case 'audit':
      room.audit = msg.audit;
      break;
    case 'run':
      room.runs = upsertRun(room.runs, msg.run);
      break;
  }
  if (msg.type === 'sites' || msg.type === 'runs') {
    const errors = { ...room.errors };
    delete errors[msg.type]; // this part answered again
    room.errors = errors;
  }
  change.changed.add(msg.room);
  return change;
}
