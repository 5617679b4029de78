/**
 * One room seen from every surface: a notebook's room in the sidebar (its notebooks, the attach line, no ✕),
 * readable site policies, a rounds table that scrolls instead of overflowing, and progress for long actions.
 */
import { renderBody, renderRoom, renderRun, renderSites } from '../render';
import { applyMessage, emptyState, IRoomState } from '../state';
import { IRoomInfo, ISite } from '../types';

function info(extra: Partial<IRoomInfo> = {}): IRoomInfo {
  return {
    id: 'room-2',
    url: 'ws://127.0.0.1:7001',
    kind: 'demo',
    label: 'Demo room (digits, 2 sites)',
    site_names: ['site-a', 'site-b'],
    origin: 'notebook',
    notebooks: ['quickstart.ipynb'],
    kernels: 1,
    attach: "room = fedjax_room.attach('room-2')",
    ...extra
  };
}

function roomState(i: IRoomInfo): IRoomState {
  return {
    info: i,
    sites: [],
    runs: [],
    budget: [],
    audit: [],
    errors: {},
    loaded: true
  };
}

describe('one room from every surface', () => {
  it("shows a notebook's room with its notebook and attach line, and no ✕", () => {
    const node = renderRoom(roomState(info()));
    expect(node.textContent).toContain('Opened in quickstart.ipynb');
    expect(node.querySelector('.fjr-attach-code')?.textContent).toBe(
      "room = fedjax_room.attach('room-2')"
    );
    const copy = node.querySelector('[data-action="copy-attach"]');
    expect(copy?.getAttribute('data-text')).toBe(
      "room = fedjax_room.attach('room-2')"
    );
    expect(node.querySelector('[data-action="disconnect"]')).toBeNull();
  });

  it("keeps ✕ for the sidebar's own room and names the notebooks using it", () => {
    const node = renderRoom(
      roomState(info({ origin: 'sidebar', notebooks: ['a.ipynb'] }))
    );
    expect(node.querySelector('[data-action="disconnect"]')).not.toBeNull();
    expect(node.textContent).toContain('Also used in a.ipynb.');
  });

  it('draws a policy as readable items and a coarse count whole', () => {
    const site: ISite = {
      name: 'site-a',
      status: 'online',
      record_count: '~480',
      schema: {},
      policy: {},
      schema_summary: '64 features',
      policy_summary: 'ε cap: 10 · aggregators: any',
      policy_items: [
        ['ε cap', '10'],
        ['aggregators', 'any']
      ]
    };
    const node = renderSites([site]);
    const items = Array.from(node.querySelectorAll('.fjr-policy-item')).map(
      n => n.textContent
    );
    expect(items).toEqual(['ε cap 10', 'aggregators any']);
    expect(node.textContent).not.toContain('/');
    expect(node.querySelector('.fjr-site-count')?.textContent).toBe(
      '~480 records'
    );
  });

  it("shows which protections a run has, and nothing when the server doesn't know", () => {
    const base = {
      id: 'run-1',
      spec_hash: 'ab',
      status: 'running',
      rounds_done: 0,
      rounds: 2,
      history: [],
      refusals: [],
      error: null,
      started_here: false
    };
    const node = renderRun(
      { ...base, protections: ['secure aggregation', 'DP target epsilon 3'] },
      'room-1'
    );
    expect(node.querySelector('.fjr-protections')?.textContent).toBe(
      'protections: secure aggregation · DP target epsilon 3'
    );
    expect(
      renderRun(base, 'room-1').querySelector('.fjr-protections')
    ).toBeNull();
  });

  it('puts the rounds table in a scrolling wrapper', () => {
    const node = renderRun(
      {
        id: 'run-1',
        spec_hash: 'ab',
        status: 'running',
        rounds_done: 1,
        rounds: 2,
        history: [
          {
            round: 1,
            sites: ['site-a'],
            dropped: [],
            loss: 0.5,
            accuracy: 0.8,
            epsilon: { 'site-a': 1 }
          }
        ],
        refusals: [],
        error: null,
        started_here: false
      },
      'room-1'
    );
    expect(
      node.querySelector('.fjr-table-wrap > table.fjr-rounds')
    ).not.toBeNull();
    const headers = Array.from(node.querySelectorAll('.fjr-rounds th')).map(
      th => th.textContent
    );
    expect(headers).toEqual(['round', 'loss*', 'acc*', 'max ε']); // no empty dropped / flagged columns
  });

  it('shows a long action in progress, and what the server could not do', () => {
    const state = emptyState();
    const change = applyMessage(state, {
      type: 'rooms',
      rooms: [],
      active: false,
      notices: ["a notebook's room could not be shown: ConnectionError: no"]
    });
    expect(change.rooms).toBe(true);
    state.busy = 'Starting a demo room…';
    const body = renderBody(state);
    expect(body.querySelector('.fjr-busy')?.textContent).toBe(
      'Starting a demo room…'
    );
    expect(body.querySelector('.fjr-spinner')).not.toBeNull();
    expect(body.textContent).toContain('could not be shown');
    state.busy = null;
    expect(renderBody(state).querySelector('.fjr-busy')).toBeNull();
  });
});
