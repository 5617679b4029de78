"""DP exploration queries across sites: latency, and relative error against OpenDP on the pooled data.

For 3 and 10 sites (``--sites``) it starts an embedded room (:func:`fedjax_room.sim.demo.start_room`: a
coordinator process and one process per site on 127.0.0.1, real websockets, the ``digits`` dataset split IID
across the sites) and, as the analyst, asks two queries:

* ``count_by_label`` (10 classes), and
* a 32-bin ``histogram`` of one pixel (``--feature``, bins 0, 1/32, ..., 1: declared, public),

each plain (every site answers with its own noise; the analyst sees each site and the sum) and secure (each
site adds its share of the discrete noise and the masked vectors are summed under secure aggregation; the
coordinator learns only the noised sum).

**Latency**: the wall time of ``room.query`` on the analyst side at epsilon 1, median of ``--repeats`` calls
(the first call of each kind is dropped: it warms the sites' code paths).

**Relative error** at epsilon 0.1, 1 and 3: ``sum |released - true| / sum true`` over the entries, the mean
over ``--trials`` queries. The truth is the un-noised vector over the pooled data (the benchmark made the data,
so it reads the union of the sites' data files: a site answers over its training and held-out records). The
reference is what a user would otherwise need the raw data for: **OpenDP on the pooled data, in the same run**
— the records' categories (class, or bin) through ``make_count_by_categories`` and ``then_laplace(scale =
1/epsilon)``, the central epsilon-DP histogram. A ratio of 1 means the federated answer is as accurate as
pooling the data; plain queries carry one site's noise per site (about sqrt(sites) times the central error),
secure ones one share of it per site.

    python benchmarks/queries.py                    # 3 and 10 sites; about 5 minutes on 2 cores
    python benchmarks/queries.py --sites 3 --trials 5 --repeats 3 --json

Every site's policy here allows queries up to epsilon 3 with a large cap (the benchmark spends many queries).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

EPSILONS = (0.1, 1.0, 3.0)
MODES = ("plain", "secure")
POLICY = {
    "epsilon_cap": 1e5,
    "queries": {
        "allowed": ["count_by_label", "histogram"],
        "max_epsilon": 3.0,
        "epsilon_share": 1.0,
    },
}


def _queries(feature: str) -> dict[str, dict[str, Any]]:
    edges = [float(x) for x in np.linspace(0.0, 1.0, 33)]
    return {
        "count_by_label": {"kind": "count_by_label"},
        "histogram_32": {"kind": "histogram", "feature": feature, "bins": edges},
    }


def _truth_and_categories(query: dict[str, Any], pooled: Any, epsilon: float) -> tuple[np.ndarray, np.ndarray, int]:
    """The un-noised vector over the pooled data, each record's category, and the category count."""
    from fedjax_room.protocol.query_spec import QuerySpec
    from fedjax_room.site.queries import record_columns, true_vector

    spec = QuerySpec.from_dict({**query, "epsilon": epsilon})
    truth = true_vector(spec, [pooled]).astype(np.float64)
    ((entries, _fixed),) = record_columns(spec, pooled)
    return truth, np.asarray(entries), truth.size


def _opendp_central(categories: np.ndarray, size: int, epsilon: float) -> np.ndarray:
    """OpenDP on the pooled records: count by category, then the Laplace mechanism at scale 1/epsilon."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance()
    meas = (
        space
        >> dp.t.then_count_by_categories(categories=list(range(size)), null_category=False)
        >> dp.m.then_laplace(scale=1.0 / epsilon)
    )
    assert float(meas.map(1)) <= epsilon * (1 + 1e-9), "OpenDP maps the reference above its epsilon"
    kept = categories[categories >= 0]
    return np.asarray(meas(kept.astype(np.int64).tolist()), np.float64)


def _pooled(embedded: Any) -> Any:
    """The union of the sites' records, read from the files the demo wrote (only it has them)."""
    from fedjax_room.data import Dataset, load_dataset

    names = [embedded.site_dir(n) / part for n in embedded.site_names for part in ("train.npz", "heldout.npz")]
    parts = [load_dataset(path) for path in names]  # a site answers a query over all its records
    return Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]), parts[0].schema)


def _relative_error(released: np.ndarray, truth: np.ndarray) -> float:
    return float(np.abs(np.asarray(released, np.float64) - truth).sum() / max(truth.sum(), 1.0))


def measure(sites: int, *, trials: int, repeats: int, feature: str, timeout: float) -> list[dict[str, Any]]:
    from fedjax_room.sim.demo import start_room

    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with start_room(sites=sites, dataset="digits", policy=POLICY) as embedded:
        start_s = time.perf_counter() - started
        room = embedded.connect()
        pooled = _pooled(embedded)
        try:
            for name, query in _queries(feature).items():
                for mode in MODES:
                    secure = mode == "secure"
                    call = {**query, "secure": secure, "timeout": timeout}
                    room.query(**call, epsilon=1.0)  # warm-up, dropped
                    times = []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        room.query(**call, epsilon=1.0)
                        times.append(time.perf_counter() - t0)
                    row: dict[str, Any] = {
                        "sites": sites,
                        "query": name,
                        "mode": mode,
                        "latency_s": statistics.median(times),
                        "latency_all_s": [round(t, 4) for t in times],
                        "records": int(len(pooled)),
                        "room_start_s": round(start_s, 1),
                    }
                    for epsilon in EPSILONS:
                        truth, categories, size = _truth_and_categories(query, pooled, epsilon)
                        fed = [_relative_error(room.query(**call, epsilon=epsilon).total, truth) for _ in range(trials)]
                        central = [
                            _relative_error(_opendp_central(categories, size, epsilon), truth) for _ in range(trials)
                        ]
                        row[f"err_{epsilon:g}"] = statistics.fmean(fed)
                        row[f"opendp_{epsilon:g}"] = statistics.fmean(central)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            room.close()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| sites | query | mode | latency (s) | "
        + " | ".join(f"rel. error ε={e:g} (OpenDP pooled, ratio)" for e in EPSILONS)
        + " |"
    )
    lines = [head, "|" + "---|" * (4 + len(EPSILONS))]
    for r in rows:
        cells = []
        for e in EPSILONS:
            fed, ref = r[f"err_{e:g}"], r[f"opendp_{e:g}"]
            ratio = f"{fed / ref:.2f}x" if ref > 0 else "—"
            cells.append(f"{fed:.4f} ({ref:.4f}, {ratio})")
        lines.append(
            f"| {r['sites']} | {r['query']} | {r['mode']} | {r['latency_s']:.3f} | " + " | ".join(cells) + " |"
        )
    by_key = {(r["sites"], r["query"], r["mode"]): r for r in rows}
    ratios = []
    for (sites, query, mode), r in sorted(by_key.items()):
        if mode == "secure" and (sites, query, "plain") in by_key:
            plain = by_key[(sites, query, "plain")]
            ratios.append(f"{sites} sites, {query}: secure / plain latency {r['latency_s'] / plain['latency_s']:.2f}x")
    return "\n".join(lines + [""] + ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", default="3,10", help="comma list of site counts (default 3,10)")
    parser.add_argument("--trials", type=int, default=20, help="queries per epsilon for the error (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="timed queries per row (default 5)")
    parser.add_argument("--feature", default="pixel_3_4", help="the histogram's feature (default pixel_3_4)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a query may wait for its sites")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    ns = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for sites in (int(s) for s in ns.sites.split(",")):
        rows += measure(sites, trials=ns.trials, repeats=ns.repeats, feature=ns.feature, timeout=ns.timeout)
    print(json.dumps(rows, indent=1) if ns.json else table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
