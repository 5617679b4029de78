/**
 * The sidebar's renderers: the model as fresh DOM, which morph.ts patches into the live panel.
 *
 * Each renderer builds a fresh element from the model with textContent only (a site name or an audit
 * field can never inject markup); buttons carry `data-action` (and `data-room` / `data-run`) instead
 * of listeners, so the panel handles clicks in one place; `data-key` names what `morph` (morph.ts)
 * keeps across updates.
 *
 * Pure: the DOM only (no JupyterLab, no network), so it tests under jsdom.
 */
import { IRoomState, IState, isActive } from './state';
import { AuditRecord, IBudgetRow, IRoomInfo, IRun, ISite } from './types';

type Attrs = Record<string, string>;

export function el<K extends keyof HTMLElementTagNameMap>(
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

/** A button that asks the panel for `action` (with `data` as data-* attributes). */
export function actionButton(
  label: string,
  title: string,
  action: string,
  data: Attrs = {}
): HTMLButtonElement {
  const attrs: Attrs = {
    class: 'jp-Button fjr-button',
    title,
    type: 'button',
    'data-action': action,
    'data-key': `${action}`
  };
  for (const [name, value] of Object.entries(data)) {
    attrs[`data-${name}`] = value;
  }
  return el('button', attrs, label);
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

function section(
  key: string,
  title: string,
  ...children: (Node | null)[]
): HTMLElement {
  return el(
    'div',
    { class: 'fjr-section', 'data-key': key },
    el('div', { class: 'fjr-section-title' }, title),
    ...children
  );
}

function table(
  headers: string[],
  rows: { key: string; cells: string[] }[],
  cls = ''
): HTMLElement {
  const head = el('tr', {}, ...headers.map(h => el('th', {}, h)));
  const body = rows.map(r =>
    el('tr', { 'data-key': r.key }, ...r.cells.map(cell => el('td', {}, cell)))
  );
  return el(
    'table',
    { class: `fjr-table ${cls}` },
    el('thead', {}, head),
    el('tbody', {}, ...body)
  );
}

function bar(value: number, max: number, cls: string): HTMLElement {
  const fraction = max > 0 ? Math.max(0, Math.min(1, value / max)) : 0;
  return el(
    'div',
    { class: 'fjr-bar' },
    el('div', {
      class: `fjr-bar-fill ${cls}`,
      style: `width: ${(fraction * 100).toFixed(1)}%;`
    })
  );
}

export function renderRun(run: IRun, room: string): HTMLElement {
  const active = isActive(run);
  // the last round with a release: the room's DP accuracy on the union of the sites' held-out sets (issue 16)
  const released = run.history.filter(r => r.accuracy !== null);
  const last = released.length ? released[released.length - 1] : null;
  const total = run.rounds || Math.max(run.rounds_done, 1);
  // the dropped / flagged columns only when a round has one (the sidebar is narrow)
  const anyDropped = run.history.some(r => r.dropped.length > 0);
  const anyFlagged = run.history.some(
    r => Object.keys(r.defence?.flagged ?? {}).length > 0
  );
  const headers = ['round', 'loss*', 'acc*', 'max ε'];
  if (anyDropped) {
    headers.push('dropped');
  }
  if (anyFlagged) {
    headers.push('flagged');
  }
  const rows = run.history.map(r => {
    const eps = Object.values(r.epsilon);
    const cells = [
      String(r.round),
      fmt(r.loss),
      fmt(r.accuracy),
      eps.length ? fmt(Math.max(...eps)) : '—'
    ];
    if (anyDropped) {
      cells.push(r.dropped.length ? r.dropped.join(', ') : '—');
    }
    if (anyFlagged) {
      cells.push(Object.keys(r.defence?.flagged ?? {}).join(', ') || '—');
    }
    return { key: String(r.round), cells };
  });
  const refusals = run.refusals.map(f =>
    el(
      'li',
      { class: 'fjr-refusal', 'data-key': `${f.site}:${f.reason}` },
      el('b', {}, f.site),
      ` refused (${f.reason}): ${f.message}`
    )
  );
  const ids = { room, run: run.id };
  const summaryOnly = run.followed === false;
  return el(
    'div',
    { class: 'fjr-run', 'data-run': run.id, 'data-key': run.id },
    el(
      'div',
      { class: 'fjr-run-head' },
      el('span', { class: 'fjr-run-id' }, run.id),
      ' ',
      el('span', { class: `fjr-status fjr-status-${run.status}` }, run.status),
      ' ',
      el(
        'span',
        { class: 'fjr-progress-label' },
        `round ${run.rounds_done} / ${run.rounds || '?'}`
      ),
      active
        ? actionButton(
            'Cancel',
            'Cancel this run (yours only; its sites stop, the room records it)',
            'cancel-run',
            ids
          )
        : null,
      summaryOnly
        ? actionButton(
            'Rounds',
            "Show this run's rounds, refusals and error",
            'follow-run',
            ids
          )
        : null,
      run.waiting && run.waiting.length
        ? el(
            'div',
            { class: 'fjr-waiting' },
            `waiting for approval by ${run.waiting.join(', ')}`
          )
        : null
    ),
    bar(run.rounds_done, total, `fjr-fill-${run.status}`),
    run.protections && run.protections.length
      ? el(
          'div',
          { class: 'fjr-protections' },
          `protections: ${run.protections.join(' · ')}`
        )
      : null,
    last
      ? el(
          'div',
          { class: 'fjr-metrics' },
          `round ${last.round}: held-out accuracy ${fmt(last.accuracy)}` +
            (typeof last.accuracy_std === 'number'
              ? ` ± ${fmt(last.accuracy_std)}`
              : '') +
            ` · DP-noised loss ${fmt(last.loss)} (summed over the sites)`
        )
      : null,
    rows.length
      ? el(
          'div',
          { class: 'fjr-table-wrap' },
          table(headers, rows, 'fjr-rounds')
        )
      : null,
    rows.length
      ? el('div', { class: 'fjr-note' }, '* DP-noised, released by the sites')
      : null,
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

export function renderBudget(rows: IBudgetRow[]): HTMLElement {
  return el(
    'div',
    { class: 'fjr-budget' },
    ...rows.map(row => {
      const spent = row.epsilon_spent ?? 0;
      const cap = row.epsilon_cap ?? 0;
      const ratio = cap > 0 ? spent / cap : 0;
      const cls =
        ratio >= 1
          ? 'fjr-fill-over'
          : ratio >= 0.8
            ? 'fjr-fill-warn'
            : 'fjr-fill-ok';
      return el(
        'div',
        {
          class: 'fjr-budget-row',
          'data-site': row.site,
          'data-key': row.site
        },
        el('span', { class: 'fjr-budget-site' }, row.site),
        bar(spent, cap, cls),
        el(
          'span',
          { class: 'fjr-budget-label' },
          `ε ${fmt(row.epsilon_spent)} / ${fmt(row.epsilon_cap)}`
        ),
        // composed (PLD) against the sum of the runs' epsilons, when a site has two runs or more
        row.note ? el('div', { class: 'fjr-budget-note' }, row.note) : null
      );
    })
  );
}

export function renderSites(sites: ISite[]): HTMLElement {
  return el(
    'div',
    { class: 'fjr-sites' },
    ...sites.map(s =>
      el(
        'div',
        { class: 'fjr-site', 'data-site': s.name, 'data-key': s.name },
        el(
          'div',
          { class: 'fjr-site-head' },
          el('b', {}, s.name),
          el(
            'span',
            { class: `fjr-site-status fjr-site-${s.status}` },
            `● ${s.status}`
          ),
          el('span', { class: 'fjr-site-count' }, `${s.record_count} records`)
        ),
        el(
          'div',
          { class: 'fjr-site-line', title: JSON.stringify(s.schema) },
          s.schema_summary
        ),
        renderPolicy(s)
      )
    )
  );
}

/** A site's policy, one readable item per setting ("ε cap 10", "aggregators any"); wraps between items only. */
export function renderPolicy(site: ISite): HTMLElement {
  const items = site.policy_items ?? [];
  const attrs = {
    class: 'fjr-site-line fjr-site-policy',
    title: JSON.stringify(site.policy)
  };
  if (!items.length) {
    return el('div', attrs, `policy: ${site.policy_summary}`);
  }
  return el(
    'div',
    attrs,
    el('span', { class: 'fjr-policy-head' }, 'policy'),
    ...items.map(([label, value]) =>
      el(
        'span',
        { class: 'fjr-policy-item' },
        el('span', { class: 'fjr-policy-label' }, `${label} `),
        value
      )
    )
  );
}

/** One audit field for a person: lists joined, long hex digests shortened. */
export function auditValue(value: unknown): string {
  const text = Array.isArray(value)
    ? value.map(String).join(',')
    : String(value);
  return text.length > 20 ? `${text.slice(0, 10)}…` : text;
}

const AUDIT_SKIP = new Set([
  'kind',
  'index',
  'hash',
  'prev',
  'signature',
  'sig',
  'writer',
  'time',
  'ts',
  'v',
  'fields'
]);

export function renderAudit(records: AuditRecord[]): HTMLElement {
  return el(
    'ol',
    { class: 'fjr-audit' },
    ...records
      .slice()
      .reverse()
      .map((r, i) => {
        const nested =
          r.fields && typeof r.fields === 'object'
            ? (r.fields as Record<string, unknown>)
            : {};
        const fields = Object.entries({ ...r, ...nested })
          .filter(
            ([k, v]) =>
              !AUDIT_SKIP.has(k) &&
              v !== null &&
              (typeof v !== 'object' || Array.isArray(v))
          )
          .map(([k, v]) => `${k}=${auditValue(v)}`)
          .join(' ');
        const time = typeof r.time === 'string' ? r.time.slice(11, 19) : '';
        const key = r.index !== undefined ? `#${String(r.index)}` : `@${i}`;
        return el(
          'li',
          { title: JSON.stringify(r), 'data-key': key },
          time ? el('span', { class: 'fjr-audit-time' }, `${time} `) : null,
          el('b', {}, String(r.kind ?? '?')),
          ' ',
          fields
        );
      })
  );
}

/** Which notebooks use the room, and the one line that connects another (with a Copy button). */
export function renderUsage(info: IRoomInfo): HTMLElement | null {
  const notebooks = info.notebooks ?? [];
  const where =
    info.origin === 'notebook'
      ? `Opened in ${notebooks.length ? notebooks.join(', ') : 'a notebook'}; close it there (%room stop).`
      : notebooks.length
        ? `Also used in ${notebooks.join(', ')}.`
        : null;
  if (!where && !info.attach) {
    return null;
  }
  return el(
    'div',
    { class: 'fjr-usage', 'data-key': 'usage' },
    where ? el('div', { class: 'fjr-note fjr-notebooks' }, where) : null,
    info.attach
      ? el(
          'div',
          { class: 'fjr-attach', title: 'Use this room from a notebook' },
          el('code', { class: 'fjr-attach-code' }, info.attach),
          actionButton(
            'Copy',
            'Copy this line; run it in a notebook to use this room',
            'copy-attach',
            { room: info.id, text: info.attach }
          )
        )
      : null
  );
}

export function renderRoom(room: IRoomState): HTMLElement {
  const info = room.info;
  const runs = room.runs.slice().reverse();
  const latest = runs.length ? runs[0].id : '';
  const errors = Object.entries(room.errors || {}).map(([what, msg]) =>
    el(
      'div',
      { class: 'fjr-error', 'data-key': `error:${what}` },
      `${what}: ${msg}`
    )
  );
  const ids = { room: info.id };
  return el(
    'div',
    { class: 'fjr-room', 'data-room': info.id, 'data-key': info.id },
    el(
      'div',
      { class: 'fjr-room-head', 'data-key': 'head' },
      el(
        'div',
        { class: 'fjr-room-title' },
        el('span', { class: 'fjr-room-label' }, info.label),
        el('span', { class: 'fjr-room-url', title: info.url }, info.url)
      ),
      el(
        'span',
        { class: 'fjr-toolbar' },
        actionButton(
          'Run',
          'Start a training run in this room',
          'start-run',
          ids
        ),
        actionButton(
          'Dashboard',
          'Open the run dashboard notebook',
          'open-dashboard',
          {
            ...ids,
            run: latest
          }
        ),
        info.origin === 'notebook'
          ? null // the notebook's room: closed there (%room stop), not from here
          : actionButton(
              '✕',
              info.kind === 'demo' ? 'Stop the demo room' : 'Disconnect',
              'disconnect',
              ids
            )
      )
    ),
    renderUsage(info),
    ...errors,
    room.loaded
      ? null
      : el('div', { class: 'fjr-empty', 'data-key': 'loading' }, 'Loading…'),
    section(
      'sites',
      `Sites (${room.sites.length})`,
      room.sites.length ? renderSites(room.sites) : null
    ),
    section(
      'runs',
      `Runs (${room.runs.length})`,
      runs.length
        ? el(
            'div',
            { class: 'fjr-runs' },
            ...runs.map(run => renderRun(run, info.id))
          )
        : el('div', { class: 'fjr-empty' }, 'No runs yet.')
    ),
    section(
      'budget',
      'Privacy budget (ε spent / cap)',
      room.budget.length ? renderBudget(room.budget) : null
    ),
    section(
      'audit',
      'Audit (latest)',
      room.audit.length ? renderAudit(room.audit) : null
    )
  );
}

/** The panel's body for `state`: the connection's trouble, then each room (or why there is none). */
export function renderBody(state: IState): HTMLElement {
  const body = el('div', { class: 'fjr-body' });
  if (state.error) {
    body.append(
      el(
        'div',
        { class: 'fjr-error', 'data-key': 'connection' },
        `Cannot reach the Clean Room server extension: ${state.error}`
      )
    );
  }
  if (state.busy) {
    body.append(
      el(
        'div',
        { class: 'fjr-busy', 'data-key': 'busy', role: 'status' },
        el('span', { class: 'fjr-spinner' }),
        state.busy
      )
    );
  }
  if (state.notice) {
    body.append(
      el('div', { class: 'fjr-note', 'data-key': 'notice' }, state.notice)
    );
  }
  for (const [i, notice] of (state.notices ?? []).entries()) {
    body.append(
      el('div', { class: 'fjr-error', 'data-key': `notices:${i}` }, notice)
    );
  }
  if (!state.loaded) {
    body.append(
      el('div', { class: 'fjr-empty', 'data-key': 'loading' }, 'Loading…')
    );
    return body;
  }
  if (state.rooms.length === 0) {
    body.append(
      el(
        'div',
        { class: 'fjr-empty', 'data-key': 'empty' },
        'Not connected to a room. Connect to a coordinator, or start a demo room with simulated sites.'
      )
    );
    return body;
  }
  for (const room of state.rooms) {
    body.append(renderRoom(room));
  }
  return body;
}
