/**
 * The sidebar's "Query" tab, its pure half: the query form, the POST body it sends to
 * /fedjax-room/rooms/<id>/query, and the result drawn as a table (each value with its confidence
 * interval, per site where the sites answered one by one) and a bar chart with error bars.
 *
 * Pure: the DOM only (no JupyterLab, no network), so it tests under jsdom. Every string from the server
 * goes in with textContent (a site name or a label can never inject markup).
 */
import { FormError, IFormField } from './form';
import { el, fmt } from './render';

/** What POST /fedjax-room/rooms/<id>/query answers (QueryResult.to_dict() plus `ci` at `level`). */
export interface IQueryResult {
  kind: string;
  feature?: string | null;
  epsilon?: number | null;
  labels?: string[];
  total: unknown;
  noise_std?: unknown;
  per_site?: Record<string, unknown>;
  secure?: boolean;
  ci?: { level: number; lo: unknown; hi: unknown };
  [key: string]: unknown;
}

/** Each kind and what it needs besides epsilon (fedjax_room.analyst.queries). */
export const QUERY_KINDS: Record<
  string,
  { feature: boolean; bins?: boolean; bounds?: boolean; quantiles?: boolean }
> = {
  count: { feature: false },
  count_by_label: { feature: false },
  histogram: { feature: true, bins: true },
  mean: { feature: true, bounds: true },
  sum: { feature: true, bounds: true },
  quantiles: { feature: true, bounds: true, quantiles: true },
  missing: { feature: true }
};

/** The most values one list field may hold (the server refuses more: MAX_QUERY_LIST). */
export const MAX_LIST = 1024;

/** The form's fields; `sites` are the room's sites (a comma list of a subset may be typed). */
export function queryFormFields(rooms: string[]): IFormField[] {
  return [
    {
      name: 'room',
      label: 'Room',
      value: rooms[0] ?? '',
      options: rooms
    },
    {
      name: 'kind',
      label: 'Query',
      value: 'count_by_label',
      options: Object.keys(QUERY_KINDS)
    },
    {
      name: 'feature',
      label: 'Feature',
      value: '',
      help: 'a column of the declared schema (histogram, mean, sum, quantiles, missing)'
    },
    {
      name: 'epsilon',
      label: 'Epsilon',
      value: '1',
      type: 'number',
      min: '0',
      step: 'any',
      help: 'privacy each site spends on this query (from the same cap as training)'
    },
    {
      name: 'bins',
      label: 'Bin edges',
      value: '',
      help: 'histogram: declared edges, e.g. 0,4,8,16'
    },
    {
      name: 'bounds',
      label: 'Bounds',
      value: '',
      help: 'mean, sum, quantiles: declared lo,hi, e.g. 0,100'
    },
    {
      name: 'quantiles',
      label: 'Quantiles',
      value: '',
      help: 'e.g. 0.25,0.5,0.75'
    },
    {
      name: 'by',
      label: 'Group by',
      value: '',
      help: 'a declared categorical column'
    },
    {
      name: 'keys',
      label: 'Keys',
      value: '',
      help: 'its declared keys, e.g. 0,1 (never read off the data)'
    },
    {
      name: 'sites',
      label: 'Sites',
      value: '',
      help: 'a comma list; empty for every site'
    },
    {
      name: 'secure',
      label: 'Secure aggregation',
      value: 'false',
      checkbox: true,
      help: 'the coordinator learns only the noised sum (no per-site values)'
    }
  ];
}

function numbers(name: string, raw: string): number[] {
  const parts = raw
    .split(',')
    .map(p => p.trim())
    .filter(p => p.length > 0);
  if (parts.length > MAX_LIST) {
    throw new FormError(`${name}: at most ${MAX_LIST} values`);
  }
  return parts.map(p => {
    const value = Number(p);
    if (!Number.isFinite(value)) {
      throw new FormError(`${name}: ${p} is not a finite number`);
    }
    return value;
  });
}

function names(raw: string): string[] {
  return raw
    .split(',')
    .map(p => p.trim())
    .filter(p => p.length > 0);
}

/** The POST body for what a person typed (without `room`); throws FormError naming what is wrong. */
export function parseQueryForm(
  values: Record<string, string>
): Record<string, unknown> {
  const kind = (values.kind ?? '').trim();
  const needs = QUERY_KINDS[kind];
  if (!needs) {
    throw new FormError(
      `unknown query ${kind}; choose ${Object.keys(QUERY_KINDS).join(', ')}`
    );
  }
  const epsilon = Number((values.epsilon ?? '').trim());
  if (!Number.isFinite(epsilon) || epsilon <= 0) {
    throw new FormError('epsilon must be a number above 0');
  }
  const body: Record<string, unknown> = { kind, epsilon };
  const feature = (values.feature ?? '').trim();
  if (needs.feature && !feature) {
    throw new FormError(`${kind} needs a feature`);
  }
  if (feature) {
    body.feature = feature;
  }
  const bins = numbers('bin edges', values.bins ?? '');
  if (needs.bins && bins.length < 2) {
    throw new FormError('a histogram needs at least two bin edges');
  }
  for (let i = 1; i < bins.length; i++) {
    if (bins[i] <= bins[i - 1]) {
      throw new FormError('bin edges must increase');
    }
  }
  if (bins.length) {
    body.bins = bins;
  }
  const bounds = numbers('bounds', values.bounds ?? '');
  if (bounds.length && (bounds.length !== 2 || bounds[0] >= bounds[1])) {
    throw new FormError('bounds are two numbers lo,hi with lo < hi');
  }
  if (needs.bounds && !bounds.length) {
    throw new FormError(`${kind} needs declared bounds lo,hi`);
  }
  if (bounds.length) {
    body.bounds = bounds;
  }
  const quantiles = numbers('quantiles', values.quantiles ?? '');
  if (quantiles.some(q => q <= 0 || q >= 1)) {
    throw new FormError('quantiles are strictly between 0 and 1');
  }
  if (needs.quantiles && !quantiles.length) {
    throw new FormError('quantiles needs at least one quantile, e.g. 0.5');
  }
  if (quantiles.length) {
    body.quantiles = quantiles;
  }
  const by = (values.by ?? '').trim();
  const keys = names(values.keys ?? '');
  if (Boolean(by) !== keys.length > 0) {
    throw new FormError('group by needs both a column and its declared keys');
  }
  if (by) {
    body.by = by;
    body.keys = keys.map(k => (/^-?\d+$/.test(k) ? Number(k) : k));
  }
  const sites = names(values.sites ?? '');
  if (sites.length) {
    body.sites = sites;
  }
  if (values.secure === 'true') {
    body.secure = true;
  }
  return body;
}

/** A value or list of values as a flat list of numbers (null where not a finite number). */
export function flat(value: unknown): (number | null)[] {
  const out: (number | null)[] = [];
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) {
      v.forEach(walk);
    } else {
      out.push(typeof v === 'number' && Number.isFinite(v) ? v : null);
    }
  };
  walk(value);
  return out;
}

function labelsOf(result: IQueryResult, n: number): string[] {
  const labels = (result.labels ?? []).map(String);
  return labels.length === n
    ? labels
    : Array.from({ length: n }, (_, i) => String(i));
}

const SVG = 'http://www.w3.org/2000/svg';
const BLUE = '#1f77b4';

function svg(
  tag: string,
  attrs: Record<string, string | number>,
  text?: string
): SVGElement {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) {
    node.setAttribute(name, String(value));
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** Bars with error bars lo..hi (points for a mean or quantiles), as an <svg> element. */
export function barChart(
  labels: string[],
  values: (number | null)[],
  lo: (number | null)[],
  hi: (number | null)[],
  points = false
): SVGElement {
  const n = labels.length;
  const width = Math.max(220, Math.min(600, 50 + 22 * n));
  const height = 160;
  const left = 44;
  const top = 8;
  const plotW = width - left - 8;
  const plotH = height - top - 30;
  const seen = [...values, ...lo, ...hi].filter((v): v is number => v !== null);
  let yLo = seen.length ? Math.min(...seen) : 0;
  let yHi = seen.length ? Math.max(...seen) : 1;
  if (!points) {
    yLo = Math.min(yLo, 0);
    yHi = Math.max(yHi, 0);
  }
  if (yHi <= yLo) {
    yHi = yLo + (Math.abs(yLo) || 1);
  }
  const sy = (v: number): number =>
    top + plotH * (1 - (Math.min(Math.max(v, yLo), yHi) - yLo) / (yHi - yLo));
  const slot = plotW / Math.max(n, 1);
  const root = svg('svg', {
    class: 'fjr-query-chart',
    width: '100%',
    viewBox: `0 0 ${width} ${height}`,
    style: `max-width: ${width}px; display: block`,
    role: 'img'
  });
  root.append(
    svg('rect', {
      x: left,
      y: top,
      width: plotW,
      height: plotH,
      fill: 'none',
      stroke: '#ccc'
    })
  );
  for (const v of [yLo, yHi]) {
    root.append(
      svg(
        'text',
        { x: left - 4, y: sy(v) + 3, 'text-anchor': 'end', 'font-size': 10 },
        fmt(v)
      )
    );
  }
  const every = Math.max(1, Math.ceil(n / Math.max(1, plotW / 30)));
  labels.forEach((label, i) => {
    const cx = left + slot * (i + 0.5);
    const value = values[i];
    if (value !== null) {
      const mark = points
        ? svg('circle', {
            class: 'fjr-q-point',
            cx,
            cy: sy(value),
            r: 3.5,
            fill: BLUE
          })
        : svg('rect', {
            class: 'fjr-q-bar',
            x: cx - slot * 0.35,
            y: Math.min(sy(0), sy(value)),
            width: slot * 0.7,
            height: Math.max(Math.abs(sy(0) - sy(value)), 0.5),
            fill: BLUE,
            'fill-opacity': 0.8
          });
      mark.append(svg('title', {}, `${label}: ${fmt(value)}`));
      root.append(mark);
    }
    const a = lo[i];
    const b = hi[i];
    if (typeof a === 'number' && typeof b === 'number') {
      const bar = svg('g', { class: 'fjr-q-errorbar', stroke: '#222' });
      bar.append(svg('line', { x1: cx, x2: cx, y1: sy(a), y2: sy(b) }));
      for (const y of [sy(a), sy(b)]) {
        bar.append(svg('line', { x1: cx - 4, x2: cx + 4, y1: y, y2: y }));
      }
      root.append(bar);
    }
    if (i % every === 0) {
      root.append(
        svg(
          'text',
          {
            x: cx,
            y: top + plotH + 12,
            'text-anchor': 'middle',
            'font-size': 10
          },
          label.length > 10 ? `${label.slice(0, 9)}…` : label
        )
      );
    }
  });
  return root;
}

/** The result: a caption, a bar chart with error bars, and a table (label, total, interval, per site). */
export function renderQueryResult(result: IQueryResult): HTMLElement {
  const total = flat(result.total);
  const labels = labelsOf(result, total.length);
  const lo = flat(result.ci?.lo);
  const hi = flat(result.ci?.hi);
  const level = result.ci?.level ?? 0.95;
  const perSite = result.per_site ?? {};
  const sites = Object.keys(perSite);
  const what = result.feature
    ? `${result.kind}(${result.feature})`
    : result.kind;
  const parts = [what];
  if (typeof result.epsilon === 'number') {
    parts.push(`ε = ${fmt(result.epsilon)}`);
  }
  parts.push(`${Math.round(level * 100)}% interval`);
  if (result.secure) {
    parts.push('secure aggregation: total only');
  }
  const head = el(
    'tr',
    {},
    el('th', {}, ''),
    el('th', {}, 'all sites'),
    el('th', {}, `${Math.round(level * 100)}% CI`),
    ...sites.map(s => el('th', {}, s))
  );
  const site = sites.map(s => flat(perSite[s]));
  const rows = labels.map((label, i) =>
    el(
      'tr',
      { 'data-key': `q-${i}` },
      el('td', {}, label),
      el('td', { class: 'fjr-num' }, fmt(total[i])),
      el(
        'td',
        { class: 'fjr-num' },
        lo.length === total.length && hi.length === total.length
          ? `${fmt(lo[i])} – ${fmt(hi[i])}`
          : '—'
      ),
      ...site.map(values => el('td', { class: 'fjr-num' }, fmt(values[i])))
    )
  );
  const chart =
    lo.length === total.length && hi.length === total.length
      ? barChart(
          labels,
          total,
          lo,
          hi,
          result.kind === 'mean' || result.kind === 'quantiles'
        )
      : barChart(labels, total, [], [], false);
  const node = el(
    'div',
    { class: 'fjr-query-result', 'data-key': 'query-result' },
    el('div', { class: 'fjr-query-caption' }, parts.join(' · ')),
    el(
      'table',
      { class: 'fjr-table' },
      el('thead', {}, head),
      el('tbody', {}, ...rows)
    )
  );
  node.insertBefore(chart, node.children[1]);
  return node;
}
