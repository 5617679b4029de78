"""Secure aggregation costs: per-site and coordinator time and bytes, full graph vs SecAgg+.

    python benchmarks/secagg.py            # n in {5, 20, 100} x d in {1e5, 1e6} x {full, SecAgg+}
    python benchmarks/secagg.py --quick    # n in {5, 20} x d = 1e5, and n = 10 x d = 1e6
    python benchmarks/secagg.py --sites 10 --dims 1000000 --drop 0.2

Each row runs one whole round in one process through the msgpack wire format (fedjax_room.secagg.protocol.
run_round), so "site s" is the CPU time of one site's state machine (mean over sites; key agreement,
Shamir, sealing, mask expansion, signing) and "server s" the coordinator's (checks, running sum,
reconstruction, unmasking). "MB up/down" are one site's wire bytes. The "plain" columns are the peer
measured in the same run: each site sends its encoded vector in msgpack and the coordinator adds them,
without masks; "x plain" is (site s + server s) / (plain site s + plain server s). With ``--drop f`` a
fraction f of the sites vanish after key sharing, so the server must rebuild their masking keys and
strip their pairwise masks (the expensive recovery path).

A second table measures mask expansion (ChaCha20 keystream -> numpy ring vector, added in place).
Sites run one after another on this machine, so a real round's wall time is about
max(site s) + server s plus the network.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fedjax_room.identity import generate_key, public_key_bytes
from fedjax_room.secagg import SecAggConfig
from fedjax_room.secagg.masking import add_mask, default_neighbours
from fedjax_room.secagg.protocol import run_round


def _plain(n: int, vector: np.ndarray) -> tuple[float, float, int]:
    """Per-site encode time, server time and bytes of an unmasked round of the same size."""
    t = time.perf_counter()
    frame = msgpack.packb({"data": vector.tobytes()}, use_bin_type=True)
    site = time.perf_counter() - t
    total = np.zeros_like(vector)
    t = time.perf_counter()
    for _ in range(n):
        np.add(total, np.frombuffer(msgpack.unpackb(frame)["data"], dtype=vector.dtype), out=total)
    return site, time.perf_counter() - t, len(frame)


def bench_round(n: int, d: int, neighbours: int | None, drop: float, bits: int, keys: dict) -> dict:
    config = SecAggConfig(
        f"bench-{n}-{d}-{neighbours}-{time.time_ns()}",
        {cid: public_key_bytes(keys[cid]) for cid in range(1, n + 1)},
        vector_length=d,
        modulus_bits=bits,
        neighbours=neighbours,
    )
    dtype = np.dtype("<u4") if bits <= 32 else np.dtype("<u8")
    vector = np.random.default_rng(0).integers(0, 2**31, d, dtype=np.uint64).astype(dtype)
    inputs = {cid: vector for cid in config.ids}  # set_input copies; one array keeps memory down
    dropped = list(range(2, 2 + int(drop * n)))
    run = run_round(config, {c: keys[c] for c in config.ids}, inputs, drop={"input": dropped} if dropped else None)
    if run.error is not None:
        raise SystemExit(f"round n={n} d={d} failed: {run.error}")
    survivors = run.server.survivors
    expected = (vector.astype(np.uint64) * len(survivors)) % (1 << bits)
    assert np.array_equal(run.total.astype(np.uint64), expected), "wrong sum"
    plain_site, plain_server, plain_bytes = _plain(len(survivors), vector)
    site_s = float(np.mean([run.client_seconds[c] for c in survivors]))
    return {
        "n": n,
        "d": d,
        "graph": "full" if config.full_graph else f"k={config.holder_count - 1}",
        "t": config.threshold,
        "drop": len(dropped),
        "site_s": site_s,
        "site_max_s": max(run.client_seconds[c] for c in survivors),
        "up_mb": np.mean([run.bytes_up[c] for c in survivors]) / 1e6,
        "down_mb": np.mean([run.bytes_down[c] for c in survivors]) / 1e6,
        "server_s": run.server_seconds,
        "plain_site_s": plain_site,
        "plain_server_s": plain_server,
        "plain_mb": plain_bytes / 1e6,
        "ratio": (site_s + run.server_seconds) / (plain_site + plain_server),
    }


def bench_expansion(d: int, repeats: int, bits: int = 32) -> dict:
    acc = np.zeros(d, dtype=np.dtype("<u4") if bits <= 32 else np.dtype("<u8"))
    seed = bytes(range(32))
    add_mask(acc, seed, 1, bits)  # warm up
    t = time.perf_counter()
    for _ in range(repeats):
        add_mask(acc, seed, 1, bits)
    dt = (time.perf_counter() - t) / repeats
    return {"d": d, "bits": bits, "ms": dt * 1e3, "gb_s": d * acc.itemsize / dt / 1e9, "melem_s": d / dt / 1e6}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small subset (seconds)")
    parser.add_argument("--sites", type=int, nargs="*", default=None)
    parser.add_argument("--dims", type=int, nargs="*", default=None)
    parser.add_argument("--graphs", nargs="*", default=["full", "plus"], choices=["full", "plus"])
    parser.add_argument("--drop", type=float, default=0.0, help="fraction of sites dropping after key sharing")
    parser.add_argument("--bits", type=int, default=32)
    args = parser.parse_args(argv)

    if args.sites or args.dims:
        cases = [(n, d) for n in (args.sites or [10]) for d in (args.dims or [100_000])]
    elif args.quick:
        cases = [(5, 100_000), (20, 100_000), (10, 1_000_000)]
    else:
        cases = [(n, d) for n in (5, 20, 100) for d in (100_000, 1_000_000)] + [(10, 1_000_000)]
    keys = {cid: generate_key() for cid in range(1, max(n for n, _ in cases) + 1)}

    header = (
        f"{'n':>4} {'d':>9} {'graph':>6} {'t':>3} {'drop':>4} | {'site s':>7} {'max s':>7} {'MB up':>7} "
        f"{'MB dn':>6} | {'server s':>8} | {'plain site':>10} {'plain srv':>9} {'plain MB':>8} | {'x plain':>7}"
    )
    print(header)
    print("-" * len(header))
    for n, d in cases:
        for graph in args.graphs:
            k = None if graph == "full" else default_neighbours(n)
            if graph == "plus" and (k is None or k >= n - 1):
                continue  # SecAgg+ is the full graph at this size
            r = bench_round(n, d, k, args.drop, args.bits, keys)
            print(
                f"{r['n']:>4} {r['d']:>9} {r['graph']:>6} {r['t']:>3} {r['drop']:>4} | {r['site_s']:>7.3f} "
                f"{r['site_max_s']:>7.3f} {r['up_mb']:>7.2f} {r['down_mb']:>6.3f} | {r['server_s']:>8.3f} | "
                f"{r['plain_site_s']:>10.4f} {r['plain_server_s']:>9.4f} {r['plain_mb']:>8.2f} | {r['ratio']:>7.1f}",
                flush=True,
            )

    print()
    print(f"{'mask expansion':>15} {'bits':>4} {'ms':>8} {'GB/s':>6} {'Melem/s':>8}")
    for d in (100_000, 1_000_000, 10_000_000):
        for bits in (32, 64):
            e = bench_expansion(d, repeats=3 if d >= 10_000_000 else 10, bits=bits)
            print(f"{'d=' + str(d):>15} {bits:>4} {e['ms']:>8.2f} {e['gb_s']:>6.2f} {e['melem_s']:>8.0f}")
    e = bench_expansion(1_000_000, 10)
    print(
        f"\n10 sites x 1e6 parameters: a site adds its self mask and 9 pairwise masks = {10 * e['ms']:.0f} ms of "
        f"mask expansion; the server strips 10 self masks = {10 * e['ms']:.0f} ms ({os.cpu_count()} cores, shared)"
    )


if __name__ == "__main__":
    main()
