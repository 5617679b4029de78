/**
 * The renderers and the keyed DOM patcher: text only, keys kept, focus and scroll survive an update.
 */
import { morph } from '../morph';
import { renderBody, renderRun, fmt } from '../render';
import { applyMessage, emptyState, IState } from '../state';
import { IRun } from '../types';

function run(id: string, extra: Partial<IRun> = {}): IRun {
  return {
    id,
    spec_hash: 'ab',
    status: 'running',
    rounds_done: 1,
    rounds: 3,
    history: [
      {
        round: 1,
        sites: ['site-a'],
        dropped: [],
        loss: 0.5,
        accuracy: 0.75,
        epsilon: { 'site-a': 1.25 }
      }
    ],
    refusals: [],
    error: null,
    started_here: true,
    followed: true,
    waiting: [],
    ...extra
  };
}

function stateWith(runs: IRun[]): IState {
  const state = emptyState();
  applyMessage(state, {
    type: 'snapshot',
    room: 'room-1',
    info: {
      id: 'room-1',
      url: 'ws://127.0.0.1:8765',
      kind: 'demo',
      label: 'Demo room (digits, 2 sites)',
      site_names: ['site-a', 'site-b']
    },
    sites: [],
    runs,
    budget: [
      {
        site: 'site-a',
        epsilon_spent: 1.25,
        epsilon_cap: 10,
        delta: 1e-5,
        remaining: 8.75
      }
    ],
    audit: [{ index: 3, kind: 'run_requested', run_id: 'run-1' }],
    errors: {}
  });
  return state;
}

describe('renderers', () => {
  it('formats numbers for a person', () => {
    expect(fmt(null)).toBe('—');
    expect(fmt(NaN)).toBe('—');
    expect(fmt(0.123456)).toBe('0.1235');
    expect(fmt(0.00001234)).toBe('0.0000123');
    expect(fmt(1234567)).toBe('1.23e+6');
  });

  it('draws a run: progress, rounds, refusals, and a cancel button only while live', () => {
    const node = renderRun(
      run('run-1', {
        refusals: [
          { site: 'site-b', reason: 'epsilon_cap', message: 'past its cap' }
        ]
      }),
      'room-1'
    );
    expect(node.querySelector('.fjr-progress-label')?.textContent).toBe(
      'round 1 / 3'
    );
    expect(node.querySelectorAll('.fjr-rounds tbody tr')).toHaveLength(1);
    expect(node.querySelector('.fjr-refusal')?.textContent).toBe(
      'site-b refused (epsilon_cap): past its cap'
    );
    const cancel = node.querySelector('[data-action="cancel-run"]');
    expect(cancel?.getAttribute('data-run')).toBe('run-1');
    expect(cancel?.getAttribute('data-room')).toBe('room-1');
    const done = renderRun(run('run-2', { status: 'finished' }), 'room-1');
    expect(done.querySelector('[data-action="cancel-run"]')).toBeNull();
  });

  it('offers the rounds of a run the server only summarises', () => {
    const node = renderRun(
      run('run-9', { followed: false, history: [] }),
      'room-1'
    );
    expect(node.querySelector('[data-action="follow-run"]')).not.toBeNull();
  });

  it('never turns a name into markup', () => {
    const evil = '<img src=x onerror="alert(1)">';
    const node = renderRun(
      run('run-1', {
        refusals: [{ site: evil, reason: evil, message: evil }],
        error: evil
      }),
      'room-1'
    );
    expect(node.querySelector('img')).toBeNull();
    expect(node.textContent).toContain(evil);
  });

  it('says when there is no room yet', () => {
    const state = emptyState();
    expect(renderBody(state).textContent).toContain('Loading');
    applyMessage(state, { type: 'rooms', rooms: [], active: false });
    expect(renderBody(state).textContent).toContain('Not connected to a room');
  });
});

describe('morph', () => {
  it('patches text and attributes in place, keeping every keyed node', () => {
    const state = stateWith([run('run-1')]);
    const live = renderBody(state);
    document.body.append(live);
    const runNode = live.querySelector('[data-run="run-1"]');
    const label = live.querySelector('.fjr-progress-label');

    const next = run('run-1', { rounds_done: 2 });
    next.history = [
      ...next.history,
      { ...next.history[0], round: 2, loss: 0.25 }
    ];
    applyMessage(state, {
      type: 'run',
      room: 'room-1',
      run: next,
      event: null
    });
    morph(live, renderBody(state));

    expect(live.querySelector('[data-run="run-1"]')).toBe(runNode);
    expect(live.querySelector('.fjr-progress-label')).toBe(label);
    expect(label?.textContent).toBe('round 2 / 3');
    expect(live.querySelectorAll('.fjr-rounds tbody tr')).toHaveLength(2);
    expect(morph(live, renderBody(state))).toBe(0); // nothing changed: nothing created or removed
    live.remove();
  });

  it('keeps focus and scroll when another run arrives and the runs reorder', () => {
    const state = stateWith([run('run-1')]);
    const scroller = document.createElement('div');
    scroller.style.overflowY = 'auto';
    const live = renderBody(state);
    scroller.append(live);
    document.body.append(scroller);
    const cancel = live.querySelector<HTMLButtonElement>(
      '[data-run="run-1"] [data-action="cancel-run"]'
    );
    cancel?.focus();
    expect(document.activeElement).toBe(cancel);
    scroller.scrollTop = 40;

    applyMessage(state, {
      type: 'run',
      room: 'room-1',
      run: run('run-2'),
      event: null
    });
    morph(live, renderBody(state));

    const ids = Array.from(live.querySelectorAll('.fjr-run')).map(n =>
      n.getAttribute('data-run')
    );
    expect(ids).toEqual(['run-2', 'run-1']); // newest first
    expect(
      live.querySelector('[data-run="run-1"] [data-action="cancel-run"]')
    ).toBe(cancel);
    expect(document.activeElement).toBe(cancel);
    expect(scroller.scrollTop).toBe(40);
    scroller.remove();
  });

  it('removes what is gone and adds what is new', () => {
    const live = document.createElement('div');
    const a = document.createElement('p');
    a.setAttribute('data-key', 'a');
    a.textContent = 'A';
    live.append(a, 'tail');
    const fresh = document.createElement('div');
    const b = document.createElement('p');
    b.setAttribute('data-key', 'b');
    b.textContent = 'B';
    fresh.append(b);
    morph(live, fresh);
    expect(live.innerHTML).toBe('<p data-key="b">B</p>');
  });
});
