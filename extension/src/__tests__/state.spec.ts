/** The sidebar's model: each pushed message changes only what it names. */
import { anyActive, applyMessage, emptyState, mergeRuns } from '../state';
import { IRoomInfo, IRun } from '../types';

const info = (id: string): IRoomInfo => ({
  id,
  url: 'ws://x',
  kind: 'remote',
  label: `Room ${id}`,
  site_names: []
});

const run = (id: string, extra: Partial<IRun> = {}): IRun => ({
  id,
  spec_hash: '',
  status: 'finished',
  rounds_done: 0,
  rounds: 2,
  history: [],
  refusals: [],
  error: null,
  started_here: false,
  followed: false,
  ...extra
});

describe('applyMessage', () => {
  it('redraws on the first room list, even an empty one', () => {
    const state = emptyState();
    expect(
      applyMessage(state, { type: 'rooms', rooms: [], active: false }).rooms
    ).toBe(true);
    expect(
      applyMessage(state, { type: 'rooms', rooms: [], active: false }).rooms
    ).toBe(false);
  });

  it('follows the room list and names the rooms it changed', () => {
    const state = emptyState();
    let change = applyMessage(state, {
      type: 'rooms',
      rooms: [info('room-1')],
      active: false
    });
    expect(state.loaded).toBe(true);
    expect(change.rooms).toBe(true);
    change = applyMessage(state, {
      type: 'sites',
      room: 'room-1',
      sites: [
        {
          name: 'a',
          status: 'connected',
          record_count: '~100',
          schema: {},
          policy: {},
          schema_summary: '',
          policy_summary: ''
        }
      ]
    });
    expect(change.rooms).toBe(false);
    expect([...change.changed]).toEqual(['room-1']);
    expect(state.rooms[0].sites[0].name).toBe('a');
    change = applyMessage(state, { type: 'sites', room: 'room-9', sites: [] });
    expect(change.changed.size).toBe(0); // not a room we know
  });

  it('puts a pushed run in place, and says when one is live', () => {
    const state = emptyState();
    applyMessage(state, {
      type: 'rooms',
      rooms: [info('room-1')],
      active: false
    });
    applyMessage(state, {
      type: 'runs',
      room: 'room-1',
      runs: [run('run-1'), run('run-2')]
    });
    expect(anyActive(state)).toBe(false);
    applyMessage(state, {
      type: 'run',
      room: 'room-1',
      run: run('run-2', { status: 'running', followed: true }),
      event: { kind: 'status' }
    });
    expect(state.rooms[0].runs.map(r => r.id)).toEqual(['run-1', 'run-2']);
    expect(anyActive(state)).toBe(true);
  });

  it('keeps a followed run when the list only summarises it', () => {
    const detailed = run('run-1', { followed: true, history: [] });
    detailed.history.push({
      round: 1,
      sites: [],
      dropped: [],
      loss: 1,
      accuracy: 0.5,
      epsilon: {}
    });
    const merged = mergeRuns([detailed], [run('run-1')]);
    expect(merged[0]).toBe(detailed);
    const changed = mergeRuns([detailed], [run('run-1', { status: 'failed' })]);
    expect(changed[0].status).toBe('failed');
  });

  it('shows a failed poll until the part answers again, and a refused message', () => {
    const state = emptyState();
    applyMessage(state, {
      type: 'rooms',
      rooms: [info('room-1')],
      active: false
    });
    applyMessage(state, {
      type: 'room_error',
      room: 'room-1',
      part: 'sites',
      message: 'TimeoutError: no answer'
    });
    expect(state.rooms[0].errors).toEqual({ sites: 'TimeoutError: no answer' });
    applyMessage(state, { type: 'sites', room: 'room-1', sites: [] });
    expect(state.rooms[0].errors).toEqual({});
    applyMessage(state, {
      type: 'error',
      message: 'at most 32 runs per sidebar'
    });
    expect(state.notice).toBe('at most 32 runs per sidebar');
  });
});
