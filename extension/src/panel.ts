/**
 * The "Clean Room" sidebar: connected rooms, their sites, runs with live round progress and DP-noised
 * metrics, each site's epsilon against its cap, refusals and the latest audit records.
 *
 * Rendering is plain DOM with textContent only (a site name or an audit field can never inject markup).
 * The panel polls the server: every `activeInterval` ms while a run is pending or running, every
 * `idleInterval` ms otherwise, and not at all while hidden and idle.
 */
import { Widget } from '@lumino/widgets';

import { api, ApiError, IBudgetRow, IRun, ISite, ISnapshot, IStatus } from './api';

export interface IPanelActions {
  connect(): void;
  startDemo(): void;
  startRun(room: string): void;
  openDashboard(room: string, run: string | null): void;
  cancelRun(room: string, run: string): void;
  disconnect(room: string): void;
}

export interface IPollIntervals {
  activeInterval: number;
  idleInterval: number;
}

type Attrs = Record<string, string>;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Node | string | null)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null) {
      node.append(child);
    }
  }
  return node;
}

function button(label: string, title: string, onClick: () => void): HTMLButtonElement {
  const node = el('button', { class: 'jp-Button fjr-button', title }, label);
  node.addEventListener('click', onClick);
  return node;
}

/** A number for a person: 4 significant digits, a dash when absent. */
export function fmt(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) {
    return '—';
  }
  if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e6)) {
    return value.toPrecision(3);
  }
  return String(Number(value.toPrecision(4)));
}

function section(title: string, ...children: (Node | null)[]): HTMLElement {
  return el('div', { class: 'fjr-section' }, el('div', { class: 'fjr-section-title' }, title), ...children);
}

function table(headers: string[], rows: (string | Node)[][], cls = ''): HTMLElement {
  const head = el('tr', {}, ...headers.map(h => el('th', {}, h)));
  const body = rows.map(r => el('tr', {}, ...r.map(cell => el('td', {}, cell))));
  return el('table', { class: `fjr-table ${cls}` }, el('thead', {}, head), el('tbody', {}, ...body));
}

function bar(value: number, max: number, cls: string): HTMLElement {
  const fraction = max > 0 ? Math.max(0, Math.min(1, value / max)) : 0;
  const fill = el('div', { class: `fjr-bar-fill ${cls}` });
  fill.style.width = `${(fraction * 100).toFixed(1)}%`;
  return el('div', { class: 'fjr-bar' }, fill);
}

function runRows(run: IRun, cancel: (run: string) => void): HTMLElement {
  const active = run.status === 'pending' || run.status === 'running';
  const last = run.history.length ? run.history[run.history.length - 1] : null;
  const total = run.rounds || Math.max(run.rounds_done, 1);
  const statusCls = `fjr-status fjr-status-${run.status}`;
  const rounds = run.history.map(r => {
    const eps = Object.values(r.epsilon);
    return [
      String(r.round),
      fmt(r.loss),
      fmt(r.accuracy),
      eps.length ? fmt(Math.max(...eps)) : '—',
      r.dropped.length ? r.dropped.join(', ') : '—',
      Object.keys(r.defence?.flagged ?? {}).join(', ') || '—'
    ];
  });
  const refusals = run.refusals.map(f =>
    el('li', { class: 'fjr-refusal' }, el('b', {}, f.site), ` refused (${f.reason}): ${f.message}`)
  );
  return el(
    'div',
    { class: 'fjr-run', 'data-run': run.id },
    el(
      'div',
      { class: 'fjr-run-head' },
      el('span', { class: 'fjr-run-id' }, run.id),
      ' ',
      el('span', { class: statusCls }, run.status),
      ' ',
      el('span', { class: 'fjr-progress-label' }, `round ${run.rounds_done} / ${run.rounds || '?'}`),
      active
        ? button('Cancel', 'Cancel this run (yours only; its sites stop, the room records it)', () => cancel(run.id))
        : null,
      run.waiting && run.waiting.length
        ? el('div', { class: 'fjr-waiting' }, `waiting for approval by ${run.waiting.join(', ')}`)
        : null
    ),
    bar(run.rounds_done, total, `fjr-fill-${run.status}`),
    last
      ? el(
          'div',
          { class: 'fjr-metrics' },
          `DP-noised loss ${fmt(last.loss)} · accuracy ${fmt(last.accuracy)}`
        )
      : null,
    rounds.length ? table(['round', 'loss*', 'acc*', 'max ε', 'dropped', 'flagged'], rounds, 'fjr-rounds') : null,
    rounds.length ? el('div', { class: 'fjr-note' }, '* DP-noised, released by the sites') : null,
    refusals.length ? el('ul', { class: 'fjr-refusals' }, ...refusals) : null,
    run.error
      ? el(
          'div',
          { class: 'fjr-error', title: run.error },
          // the refusals above already give each site's reason: keep the error's first sentence
          `error: ${run.refusals.length ? run.error.split('. ')[0] : run.error}`
        )
      : null
  );
}

function budgetRows(rows: IBudgetRow[]): HTMLElement {
  return el(
    'div',
    { class: 'fjr-budget' },
    ...rows.map(row => {
      const spent = row.epsilon_spent ?? 0;
      const cap = row.epsilon_cap ?? 0;
      const ratio = cap > 0 ? spent / cap : 0;
      const cls = ratio >= 1 ? 'fjr-fill-over' : ratio >= 0.8 ? 'fjr-fill-warn' : 'fjr-fill-ok';
      return el(
        'div',
        { class: 'fjr-budget-row', 'data-site': row.site },
        el('span', { class: 'fjr-budget-site' }, row.site),
        bar(spent, cap, cls),
        el('span', { class: 'fjr-budget-label' }, `ε ${fmt(row.epsilon_spent)} / ${fmt(row.epsilon_cap)}`)
      );
    })
  );
}

function siteRows(sites: ISite[]): HTMLElement {
  return el(
    'div',
    { class: 'fjr-sites' },
    ...sites.map(s =>
      el(
        'div',
        { class: 'fjr-site', 'data-site': s.name },
        el(
          'div',
          { class: 'fjr-site-head' },
          el('b', {}, s.name),
          el('span', { class: `fjr-site-status fjr-site-${s.status}` }, `● ${s.status}`),
          el('span', { class: 'fjr-site-count' }, `${s.record_count} records`)
        ),
        el('div', { class: 'fjr-site-line', title: JSON.stringify(s.schema) }, s.schema_summary),
        el('div', { class: 'fjr-site-line fjr-site-policy', title: JSON.stringify(s.policy) }, `policy: ${s.policy_summary}`)
      )
    )
  );
}

/** One audit field for a person: lists joined, long hex digests shortened. */
function auditValue(value: unknown): string {
  const text = Array.isArray(value) ? value.map(String).join(',') : String(value);
  return text.length > 20 ? `${text.slice(0, 10)}…` : text;
}

function auditRows(records: Record<string, unknown>[]): HTMLElement {
  const skip = new Set(['kind', 'index', 'hash', 'prev', 'signature', 'sig', 'writer', 'time', 'ts', 'v', 'fields']);
  return el(
    'ol',
    { class: 'fjr-audit' },
    ...records
      .slice()
      .reverse()
      .map(r => {
        const nested = r.fields && typeof r.fields === 'object' ? (r.fields as Record<string, unknown>) : {};
        const fields = Object.entries({ ...r, ...nested })
          .filter(([k, v]) => !skip.has(k) && v !== null && (typeof v !== 'object' || Array.isArray(v)))
          .map(([k, v]) => `${k}=${auditValue(v)}`)
          .join(' ');
        const time = typeof r.time === 'string' ? r.time.slice(11, 19) : '';
        return el(
          'li',
          { title: JSON.stringify(r) },
          time ? el('span', { class: 'fjr-audit-time' }, `${time} `) : null,
          el('b', {}, String(r.kind ?? '?')),
          ' ',
          fields
        );
      })
  );
}

export class CleanRoomPanel extends Widget {
  constructor(
    private readonly actions: IPanelActions,
    private intervals: IPollIntervals
  ) {
    super();
    this.id = 'fedjax-room-sidebar';
    this.title.caption = 'Clean Room';
    this.addClass('fjr-panel');
    this._body = el('div', { class: 'fjr-body' });
    this.node.append(this._header(), this._body);
    this._render();
  }

  setIntervals(intervals: IPollIntervals): void {
    this.intervals = intervals;
  }

  /** Fetch now and re-arm the poll timer. */
  async refresh(): Promise<void> {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
    if (this.isDisposed) {
      return;
    }
    try {
      this._status = await api.status();
      const snapshots = await Promise.all(
        this._status.rooms.map(room =>
          api.snapshot(room.id).catch((error: Error): ISnapshot => ({
            room,
            sites: [],
            runs: [],
            budget: [],
            audit: [],
            active: false,
            errors: { room: error.message }
          }))
        )
      );
      this._snapshots = snapshots;
      this._error = null;
    } catch (error) {
      this._error = error instanceof ApiError ? error.message : String(error);
    }
    this._render();
    this._schedule();
  }

  /** Whether any room has a run pending or running. */
  get active(): boolean {
    return this._snapshots.some(s => s.active);
  }

  get snapshots(): ISnapshot[] {
    return this._snapshots;
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  dispose(): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
    }
    super.dispose();
  }

  private _schedule(): void {
    if (this.isDisposed) {
      return;
    }
    if (!this.active && !this.isVisible) {
      return; // onAfterShow starts polling again
    }
    const delay = this.active ? this.intervals.activeInterval : this.intervals.idleInterval;
    this._timer = window.setTimeout(() => void this.refresh(), Math.max(250, delay));
  }

  private _header(): HTMLElement {
    return el(
      'div',
      { class: 'fjr-header' },
      el('span', { class: 'fjr-title' }, 'Clean Room'),
      el(
        'span',
        { class: 'fjr-toolbar' },
        button('Connect', 'Connect to a room', () => this.actions.connect()),
        button('Demo', 'Start an embedded demo room', () => this.actions.startDemo()),
        button('↻', 'Refresh', () => void this.refresh())
      )
    );
  }

  private _render(): void {
    const body = this._body;
    body.replaceChildren();
    if (this._error) {
      body.append(el('div', { class: 'fjr-error' }, `Cannot reach the Clean Room server extension: ${this._error}`));
    }
    if (this._status === null) {
      body.append(el('div', { class: 'fjr-empty' }, 'Loading…'));
      return;
    }
    if (this._snapshots.length === 0) {
      body.append(
        el(
          'div',
          { class: 'fjr-empty' },
          'Not connected to a room. Connect to a coordinator, or start a demo room with simulated sites.'
        )
      );
      return;
    }
    for (const snap of this._snapshots) {
      body.append(this._room(snap));
    }
  }

  private _room(snap: ISnapshot): HTMLElement {
    const room = snap.room;
    const runs = snap.runs.slice().reverse();
    const latest = runs.length ? runs[0].id : null;
    const errors = Object.entries(snap.errors || {}).map(([what, msg]) =>
      el('div', { class: 'fjr-error' }, `${what}: ${msg}`)
    );
    return el(
      'div',
      { class: 'fjr-room', 'data-room': room.id },
      el(
        'div',
        { class: 'fjr-room-head' },
        el(
          'div',
          { class: 'fjr-room-title' },
          el('span', { class: 'fjr-room-label' }, room.label),
          el('span', { class: 'fjr-room-url', title: room.url }, room.url)
        ),
        el(
          'span',
          { class: 'fjr-toolbar' },
          button('Run', 'Start a training run in this room', () => this.actions.startRun(room.id)),
          button('Dashboard', 'Open the run dashboard notebook', () => this.actions.openDashboard(room.id, latest)),
          button('✕', room.kind === 'demo' ? 'Stop the demo room' : 'Disconnect', () =>
            this.actions.disconnect(room.id)
          )
        )
      ),
      ...errors,
      section(`Sites (${snap.sites.length})`, snap.sites.length ? siteRows(snap.sites) : null),
      section(
        `Runs (${snap.runs.length})`,
        runs.length
          ? el('div', {}, ...runs.map(run => runRows(run, id => this.actions.cancelRun(room.id, id))))
          : el('div', { class: 'fjr-empty' }, 'No runs yet.')
      ),
      section('Privacy budget (ε spent / cap)', snap.budget.length ? budgetRows(snap.budget) : null),
      section('Audit (latest)', snap.audit.length ? auditRows(snap.audit) : null)
    );
  }

  private readonly _body: HTMLElement;
  private _status: IStatus | null = null;
  private _snapshots: ISnapshot[] = [];
  private _error: string | null = null;
  private _timer: number | null = null;
}
