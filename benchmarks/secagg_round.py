"""Room round time with and without secure aggregation: 10 sites, a ~1e6-parameter MLP (784-1270-10).

The room's own machinery runs in one process (the round engine, :class:`fedjax_room.sim.LoopbackRoom`): the
coordinator machine on its store, ten site machines, every frame encoded and decoded (msgpack), the SecAgg client
and server, the fixed-point encoding, FedAvg and the server optimiser.
Sites are stubs that return a synthetic update (no training) so the two modes see the same inputs. Timings are
per party (process CPU time of each call), then a round is modelled as a real room runs it: the sites work in
parallel (the slowest site counts), the coordinator's work is serial. With ``--train`` (default) one real local
DP-SGD round of the model (``--local-steps`` x batch ``--batch-size``) is timed once and added to both modes as
the sites' training time. Prints medians over ``--rounds`` rounds and the ratio against the 1.5x target.

    python benchmarks/secagg_round.py [--sites 10] [--rounds 5] [--no-train] [--hidden 1270]

Loopback sockets are not in the loop (bytes on the wire are printed instead: ~4 MB up per site either way).

``--loopback`` measures a real room instead (issue #4, Benchmark: "round time with and without secure aggregation
on loopback"). For secure aggregation off, then on, it starts an embedded room
(:func:`fedjax_room.sim.demo.start_room`: a coordinator process and ``--sites`` site processes on 127.0.0.1,
real websockets, the ``digits`` dataset), connects the analyst and trains an MLP 64-W-10 with W chosen so the
model has about ``--params`` parameters, for ``--rounds`` rounds of ``--local-steps`` DP-SGD steps. A round's
time is the wall time between successive ``run.rounds()`` results on the analyst side (round 1, with the JIT
compile, is dropped); the table shows the median per mode and the ratio secure / plain. Every process is stopped
at the end (the room is a context manager).

    python benchmarks/secagg_round.py --loopback [--sites 10] [--rounds 5] [--params 1000000] [--json]

Measured with the defaults (10 sites, d = 999,985, 5 rounds, 10 DP-SGD steps of batch 32), 2 shared cores
(another benchmark was running), ``python benchmarks/secagg_round.py --loopback``::

    loopback: 10 site processes + coordinator on 127.0.0.1, MLP 64-13333-10 (d = 999985),
    10 DP-SGD steps of batch 32 per round; medians of rounds 2..5
        mode | start s round 1 s | median round s | rounds 2.. (s)
       plain |    14.4     30.16 |           3.64 | 3.87 3.37 3.40 4.03
      secure |    10.7     23.83 |           2.03 | 2.06 2.08 2.00 1.96
    secure / plain: 0.56x  (target <= 1.5x: met)

(a second run, ``--json``: 3.14 s plain, 1.97 s secure, 0.63x). Plain rounds include the coordinator's default
per-update anomaly scores (robust.defence), which secure aggregation makes impossible and skips; that is why
secure is faster here. Against a plain round that only averages see the in-process ``--no-defence`` numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fedjax_room.models import mlp
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import pack_tree
from fedjax_room.protocol.secure import SecureRelease, SecureTrain, flatten_update, make_encoder
from fedjax_room.secagg import SecAggConfig
from fedjax_room.sim.loopback import LoopbackRoom


def _zeros(spec):
    import jax

    from fedjax_room.models import init_params

    params = init_params(spec, jax.random.PRNGKey(0))
    return jax.tree.map(lambda a: np.zeros(np.shape(a), np.float32), dict(params))


class StubSite:
    """A site agent that answers with a fixed synthetic update (no data, no training)."""

    def __init__(self, name, template, seed):
        self.name = name
        rng = np.random.default_rng(seed)
        flat = {}

        def fill(tree):
            return {
                k: fill(v) if isinstance(v, dict) else rng.normal(0, 0.01, np.shape(v)).astype(np.float32)
                for k, v in tree.items()
            }

        self.delta = fill(template)
        del flat
        self.config = None

    def status(self):
        return m.SiteStatus(
            schema={"features": ["x"]},
            record_count="~600",
            policy={"epsilon_cap": 1e9, "min_sites": 1},
            ledger={"epsilon": 0.0, "epsilon_cap": 1e9, "delta": 1e-5},
        )

    def handle(self, kind, msg):
        from fedjax_room.protocol.config import RunConfig

        if kind == "offer":
            self.config = RunConfig.from_dict(msg.config)
            return m.RunAccept(run_id=msg.run_id, plan={"min_sites": 1, "weight": 600})
        if kind == "train":
            secure = isinstance(msg, SecureTrain)
            start = msg.start if secure else msg
            update = m.Update(
                run_id=start.run_id,
                round=start.round,
                weight=600,
                payload=b"" if secure else pack_tree(self.delta),
                epsilon=0.1,
                ledger_epsilon=0.1,
                delta=1e-5,
            )
            if not secure:
                return update
            enc = make_encoder(self.config, SecAggConfig.from_dict(msg.setup.config))
            return SecureRelease(update, enc.encode(msg.setup.fraction * flatten_update(self.delta)))
        if kind == "eval":
            return m.Metrics(
                run_id=msg.run_id,
                round=msg.round,
                correct=50.0,
                count=60.0,
                loss_sum=10.0,
                epsilon=0.1,
                ledger_epsilon=0.1,
                delta=1e-5,
            )
        return None


class Bench:
    """The room's round engine (fedjax_room.sim.LoopbackRoom) with ``n`` stub sites: CPU per party, bytes up."""

    def __init__(self, tmp, n, spec, template):
        agents = {f"site-{i:02d}": StubSite(f"site-{i:02d}", template, i) for i in range(n)}
        self.room = LoopbackRoom(tmp, agents=agents, init_params=lambda s, seed: template)
        self.spec = spec
        self.sites = self.room.sites
        self.cpu = self.room.cpu
        self.bytes_up = self.room.bytes_up

    def run(self, rounds, secure):
        config = {
            "rounds": rounds,
            "target_epsilon": None,
            "noise_multiplier": 1.0,
            "secure_aggregation": secure,
            "round_timeout": 600.0,
        }
        run_id = self.room.start(self.spec, config)
        assert self.room.store.run(run_id).status == "finished", self.room.store.run(run_id).error
        return run_id, []


def _measure(tmp, n, spec, template, rounds, secure):
    """Per round: the coordinator's CPU and the slowest site's CPU (one room per round, so rounds are separate)."""
    coord, site, up = [], [], []
    for r in range(rounds):
        bench = Bench(tmp / f"{'s' if secure else 'p'}{r}", n, spec, template)
        for s in bench.sites.values():  # the synthetic updates exist before the round, like trained ones
            s["agent"].config = None
        bench.cpu.clear()
        bench.bytes_up.clear()
        bench.run(1, secure)
        coord.append(bench.cpu["coordinator"])
        site.append(max(v for k, v in bench.cpu.items() if k != "coordinator"))
        up.append(max(bench.bytes_up.values()))
    return statistics.median(coord), statistics.median(site), statistics.median(up)


def _train_time(spec, local_steps, batch_size):
    import jax

    from fedjax_room.data import Dataset, Schema
    from fedjax_room.local import LocalTrainer
    from fedjax_room.models import init_params

    schema = Schema(
        features=tuple(f"p{i}" for i in range(784)), feature_shape=(784,), label="y", classes=tuple(range(10))
    )
    rng = np.random.default_rng(0)
    data = Dataset(rng.random((600, 784), dtype=np.float32), rng.integers(0, 10, 600).astype(np.int32), schema)
    trainer = LocalTrainer(spec, clip_norm=1.0, noise_multiplier=1.0, batch_size=batch_size, learning_rate=0.1)
    params = init_params(spec, jax.random.PRNGKey(0))
    trainer.train(params, data, local_steps, 0)  # compile
    times = []
    for seed in range(3):
        t = time.perf_counter()
        new, _ = trainer.train(params, data, local_steps, seed + 1)
        jax.block_until_ready(new)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _loopback_round_times(args, spec, secure):
    """One embedded room, one run: the analyst-side wall time of each round after the first."""
    import tempfile

    from fedjax_room.sim.demo import start_room

    policy = {
        "epsilon_cap": 1e6,  # a benchmark, not a privacy budget: never the limit
        "max_params": max(1_000_000, 2 * spec.param_count()),
        "min_sites": args.sites,
    }
    with tempfile.TemporaryDirectory(prefix="secagg-loopback-") as tmp:
        started = time.perf_counter()
        with start_room(sites=args.sites, dataset="digits", state_dir=tmp, policy=policy, timeout=600.0) as er:
            startup = time.perf_counter() - started
            room = er.connect(timeout=120.0)
            try:
                run = room.train(
                    spec,
                    rounds=args.rounds,
                    target_epsilon=args.target_epsilon,
                    local_steps=args.local_steps,
                    batch_size=args.batch_size,
                    secure_aggregation=secure,
                    min_sites=args.sites,
                    round_timeout=900.0,
                    seed=0,
                )
                t0 = time.perf_counter()
                stamps = []
                for r in run.rounds(timeout=1800.0):
                    stamps.append((r.round, time.perf_counter(), len(r.sites)))
                run.wait(600.0)
                if run.status != "finished":
                    raise SystemExit(f"the {'secure' if secure else 'plain'} run {run.status}: {run.error}")
            finally:
                room.close()
    times = [t - (stamps[i - 1][1] if i else t0) for i, (_, t, _) in enumerate(stamps)]
    return {
        "startup_s": startup,
        "first_round_s": times[0],
        "round_s": times[1:],
        "median_s": statistics.median(times[1:]) if len(times) > 1 else float("nan"),
        "sites_per_round": [n for _, _, n in stamps],
    }


def _loopback(args) -> None:
    import json

    width = max(1, round((args.params - 10) / 75))  # 64*W + W + 10*W + 10 parameters
    spec = mlp((64,), 10, hidden=(width,))
    d = spec.param_count()
    results = {}
    for name, secure in (("plain", False), ("secure", True)):
        print(f"[{name}] starting a room of {args.sites} sites ...", file=sys.stderr, flush=True)
        results[name] = _loopback_round_times(args, spec, secure)
        print(f"[{name}] rounds: {[round(t, 2) for t in results[name]['round_s']]}", file=sys.stderr, flush=True)
    ratio = results["secure"]["median_s"] / results["plain"]["median_s"]
    if args.json:
        out = {
            "mode": "loopback",
            "sites": args.sites,
            "rounds": args.rounds,
            "params": d,
            "hidden": width,
            "local_steps": args.local_steps,
            "batch_size": args.batch_size,
            "target_epsilon": args.target_epsilon,
            **results,
            "ratio": ratio,
            "target_met": ratio <= 1.5,
        }
        print(json.dumps(out))
        return
    print(
        f"loopback: {args.sites} site processes + coordinator on 127.0.0.1, MLP 64-{width}-10 (d = {d}),\n"
        f"{args.local_steps} DP-SGD steps of batch {args.batch_size} per round; medians of rounds 2..{args.rounds}"
    )
    print(f"{'mode':>8} | {'start s':>7} {'round 1 s':>9} | {'median round s':>14} | rounds 2.. (s)")
    for name in ("plain", "secure"):
        r = results[name]
        rest = " ".join(f"{t:.2f}" for t in r["round_s"])
        print(f"{name:>8} | {r['startup_s']:7.1f} {r['first_round_s']:9.2f} | {r['median_s']:14.2f} | {rest}")
    print(f"secure / plain: {ratio:.2f}x  (target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})")


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--loopback", action="store_true", help="time a real embedded room (processes, websockets)")
    ap.add_argument("--params", type=int, default=1_000_000, help="--loopback: about this many model parameters")
    ap.add_argument("--target-epsilon", type=float, default=3.0, help="--loopback: per-site target of each run")
    ap.add_argument("--json", action="store_true", help="--loopback: print one JSON object")
    ap.add_argument("--hidden", type=int, default=1270)
    ap.add_argument("--no-train", dest="train", action="store_false")
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--no-defence",
        dest="defence",
        action="store_false",
        help="plain rounds skip the per-update anomaly scores (robust.defence) and only average",
    )
    args = ap.parse_args()
    if args.loopback:
        _loopback(args)
        return
    if not args.defence:
        from fedjax_room.protocol.runs import RunDriver
        from fedjax_room.robust.aggregate import aggregate

        RunDriver._defend = lambda self, a, updates: aggregate(updates, a.config.aggregator)
    spec_obj = mlp((784,), 10, hidden=(args.hidden,))
    spec = spec_obj.to_dict()
    template = _zeros(spec_obj)
    d = spec_obj.param_count()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plain = _measure(tmp, args.sites, spec, template, args.rounds, False)
        secure = _measure(tmp, args.sites, spec, template, args.rounds, True)
    train = _train_time(spec_obj, args.local_steps, args.batch_size) if args.train else 0.0
    print(
        f"{args.sites} sites, d = {d} parameters, medians of {args.rounds} rounds (CPU s; sites in parallel); "
        f"plain rounds {'with' if args.defence else 'without'} per-update anomaly scores"
    )
    print(
        f"{'mode':>8} | {'site s':>8} {'coord s':>8} {'MB up':>7} | {'protocol s':>10} | "
        f"{'+ train s':>9} {'round s':>8}"
    )
    rows = {}
    for name, (coord, site, up) in (("plain", plain), ("secure", secure)):
        proto = site + coord
        rows[name] = (proto, proto + train)
        print(
            f"{name:>8} | {site:8.3f} {coord:8.3f} {up / 1e6:7.2f} | {proto:10.3f} | {train:9.3f} {proto + train:8.3f}"
        )
    ratio_proto = rows["secure"][0] / rows["plain"][0]
    ratio = rows["secure"][1] / rows["plain"][1]
    print(f"secure / plain, protocol only: {ratio_proto:.2f}x")
    print(
        f"secure / plain, round with local training ({args.local_steps} DP-SGD steps of batch {args.batch_size}, "
        f"{train:.2f}s): {ratio:.2f}x  (target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
