/** The Query tab: what a person types becomes a typed, bounded body; a result draws with its interval. */
import { FormError, readInputs, renderFields } from '../form';
import {
  barChart,
  IQueryResult,
  MAX_LIST,
  parseQueryForm,
  queryFormFields,
  renderQueryResult
} from '../query';

/** one more bin edge than the server takes */
const OVERSIZED = Array.from({ length: MAX_LIST + 1 }, (_, i) => i).join(',');

const base = {
  kind: 'count_by_label',
  epsilon: '0.5',
  feature: '',
  bins: '',
  bounds: '',
  quantiles: '',
  by: '',
  keys: '',
  sites: '',
  secure: 'false'
};

describe('parseQueryForm', () => {
  it('sends only what the query needs, typed', () => {
    expect(parseQueryForm(base)).toEqual({
      kind: 'count_by_label',
      epsilon: 0.5
    });
    expect(
      parseQueryForm({
        ...base,
        kind: 'mean',
        feature: 'age',
        bounds: '0, 100',
        by: 'sex',
        keys: '0,1',
        sites: 'site-a, site-b',
        secure: 'true'
      })
    ).toEqual({
      kind: 'mean',
      epsilon: 0.5,
      feature: 'age',
      bounds: [0, 100],
      by: 'sex',
      keys: [0, 1],
      sites: ['site-a', 'site-b'],
      secure: true
    });
    expect(
      parseQueryForm({
        ...base,
        kind: 'histogram',
        feature: 'x3',
        bins: '0,4,8,16'
      }).bins
    ).toEqual([0, 4, 8, 16]);
  });

  it.each([
    [{ kind: 'drop_table' }, /unknown query/],
    [{ epsilon: '0' }, /epsilon/],
    [{ epsilon: 'NaN' }, /epsilon/],
    [{ kind: 'histogram', feature: 'x', bins: '4' }, /two bin edges/],
    [{ kind: 'histogram', feature: 'x', bins: '0,8,4' }, /increase/],
    [{ kind: 'histogram', feature: 'x', bins: '0,NaN' }, /finite/],
    [{ kind: 'mean', feature: 'age', bounds: '5,1' }, /lo < hi/],
    [{ kind: 'mean', feature: 'age' }, /bounds/],
    [{ kind: 'mean', bounds: '0,1' }, /needs a feature/],
    [
      { kind: 'quantiles', feature: 'a', bounds: '0,1', quantiles: '1.5' },
      /between 0 and 1/
    ],
    [{ by: 'sex' }, /keys/],
    [
      {
        kind: 'histogram',
        feature: 'x',
        bins: OVERSIZED
      },
      /at most/
    ]
  ])('refuses %#', (change: Record<string, string>, message) => {
    expect(() => parseQueryForm({ ...base, ...change })).toThrow(FormError);
    expect(() => parseQueryForm({ ...base, ...change })).toThrow(message);
  });

  it('reads back from the rendered form', () => {
    const { inputs } = renderFields(queryFormFields(['room-1', 'room-2']));
    const values = readInputs(inputs);
    expect(values.room).toBe('room-1');
    expect(parseQueryForm(values)).toEqual({
      kind: 'count_by_label',
      epsilon: 1
    });
  });
});

const counts: IQueryResult = {
  kind: 'count_by_label',
  feature: null,
  epsilon: 0.5,
  labels: ['benign', 'malignant'],
  total: [120.4, 30.2],
  per_site: { 'site-a': [100, 5], 'site-b': [20.4, 25.2] },
  ci: { level: 0.95, lo: [110, 20], hi: [130.8, 40.4] }
};

describe('renderQueryResult', () => {
  it('shows the total with its interval, each site, and an error bar per label', () => {
    const node = renderQueryResult(counts);
    const rows = Array.from(node.querySelectorAll('tbody tr')).map(tr =>
      Array.from(tr.querySelectorAll('td')).map(td => td.textContent)
    );
    expect(rows).toEqual([
      ['benign', '120.4', '110 – 130.8', '100', '20.4'],
      ['malignant', '30.2', '20 – 40.4', '5', '25.2']
    ]);
    const headers = Array.from(node.querySelectorAll('th')).map(
      th => th.textContent
    );
    expect(headers).toEqual(['', 'all sites', '95% CI', 'site-a', 'site-b']);
    expect(node.querySelectorAll('.fjr-q-bar')).toHaveLength(2);
    expect(node.querySelectorAll('.fjr-q-errorbar')).toHaveLength(2);
    expect(node.querySelector('.fjr-query-caption')?.textContent).toContain(
      'ε = 0.5'
    );
  });

  it('under secure aggregation shows the total only, and never markup from the server', () => {
    const node = renderQueryResult({
      ...counts,
      labels: ['<img src=x onerror=alert(1)>', 'b'],
      per_site: {},
      secure: true
    });
    expect(node.querySelector('img')).toBeNull();
    expect(node.textContent).toContain('<img src=x onerror=alert(1)>');
    expect(node.querySelectorAll('th')).toHaveLength(3);
    expect(node.textContent).toContain('secure aggregation: total only');
  });

  it('a mean is a point, and a missing value is a dash, not a bar', () => {
    const node = renderQueryResult({
      kind: 'mean',
      feature: 'age',
      labels: ['0', '1'],
      total: [41.5, null],
      ci: { level: 0.9, lo: [40, null], hi: [43, null] }
    });
    expect(node.querySelectorAll('.fjr-q-point')).toHaveLength(1);
    expect(node.querySelectorAll('.fjr-q-bar')).toHaveLength(0);
    expect(node.querySelectorAll('.fjr-q-errorbar')).toHaveLength(1);
    expect(node.querySelectorAll('tbody tr')[1].textContent).toContain('—');
    expect(node.textContent).toContain('90% CI');
  });
});

describe('barChart', () => {
  it('draws the interval it is given: a wider one is a longer line', () => {
    const length = (hi: number): number => {
      const chart = barChart(['a'], [10], [10 - hi], [10 + hi]);
      const line = chart.querySelector('.fjr-q-errorbar line') as Element;
      return Math.abs(
        Number(line.getAttribute('y2')) - Number(line.getAttribute('y1'))
      );
    };
    const chart = barChart(['a', 'b'], [10, 20], [], []);
    expect(chart.querySelectorAll('.fjr-q-errorbar')).toHaveLength(0);
    expect(length(1)).toBeLessThan(length(5));
  });
});
