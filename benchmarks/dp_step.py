"""Time one DP-SGD training step against a non-private step, and against Opacus.

Models (batch 256, MNIST-shaped random input, float32, CPU):

- ``mlp``: 784-512-512-10, ReLU.
- ``cnn``: the classic DP MNIST CNN (Papernot et al. / TF Privacy / Opacus example):
  conv 16 8x8 stride 2 (pad 3) -> tanh -> max-pool 2 stride 1 -> conv 32 4x4 stride 2
  -> tanh -> max-pool 2 stride 1 -> dense 32 -> tanh -> dense 10.

Modes:

- ``nonprivate``: ``jax.value_and_grad`` + ``optax.sgd``, jitted.
- ``dp_vmap`` / ``dp_fast``: :func:`fedjax_room.dp.optimizer.make_dp_train_step` with
  ``method="vmap"`` / ``"fast"`` and :func:`~fedjax_room.dp.optimizer.dpsgd`
  (clip, noise, divide by the expected batch size, SGD), jitted end to end.
- with torch + opacus installed (``pip install -e .[bench]``): ``torch_nonprivate``,
  ``opacus_hooks`` (``GradSampleModule`` + ``DPOptimizer``) and ``opacus_ghost``
  (``GradSampleModuleFastGradientClipping`` + ``DPOptimizerFastGradientClipping`` +
  ``DPLossFastGradientClipping``).

Timing: per model and framework one process builds every mode, runs ``--warmup``
steps of each (compilation), then ``--steps`` timed steps *round-robin* (the order
rotates each step) so a shared machine's load hits every mode alike; ``--rounds``
such processes (alternating JAX / PyTorch) are pooled and the median reported.
With ``--threads 1`` the modes of a model, JAX and PyTorch, share one process and
one round-robin, so cross-framework ratios are measured under the same load (the two
modes that materialise per-example gradients, ``dp_vmap`` and ``opacus_hooks``, share
a second one: freeing their memory slows the next step on the same core).
Memory: each mode once more in a fresh process; ``peak_rss_mb`` is its
``getrusage`` peak, ``base_rss_mb`` its RSS after imports, before building the step.
CPU note: JAX and PyTorch each use their default thread pools, unless ``--threads N``
pins each worker process to N cores (and sets PyTorch's thread count to N). Usage::

    python benchmarks/dp_step.py                      # table
    python benchmarks/dp_step.py --json               # one JSON object per line
    python benchmarks/dp_step.py --models mlp --steps 5 --rounds 1 --no-memory --modes nonprivate,dp_fast
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

MODELS = ("mlp", "cnn")
JAX_MODES = ("nonprivate", "dp_vmap", "dp_fast")
TORCH_MODES = ("torch_nonprivate", "opacus_hooks", "opacus_ghost")
BATCH = 256
CLIP_NORM = 1.0
NOISE_MULTIPLIER = 1.0
LEARNING_RATE = 0.05
# oneDNN matmuls/convs on XLA:CPU: about 2x faster dense layers here; applies to every JAX mode alike.
DEFAULT_XLA_FLAGS = "--xla_cpu_use_onednn=true"
HEAVY_MODES = ("dp_vmap", "opacus_hooks")


def _spec(model: str) -> Any:
    from fedjax_room.models import ModelSpec, mlp

    if model == "mlp":
        return mlp([28, 28, 1], 10, hidden=(512, 512), activation="relu")
    return ModelSpec.from_dict(
        {
            "family": "cnn",
            "input_shape": [28, 28, 1],
            "num_classes": 10,
            "layers": [
                {"type": "conv", "features": 16, "kernel": 8, "stride": 2, "padding": "SAME"},  # = pad 3
                {"type": "tanh"},
                {"type": "max_pool", "window": 2, "stride": 1},
                {"type": "conv", "features": 32, "kernel": 4, "stride": 2, "padding": "VALID"},
                {"type": "tanh"},
                {"type": "max_pool", "window": 2, "stride": 1},
                {"type": "flatten"},
                {"type": "dense", "features": 32},
                {"type": "tanh"},
                {"type": "dense", "features": 10},
            ],
        }
    )


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _jax_steps(model: str, modes: list[str]) -> dict[str, Callable[[], None]]:
    """One ``run_step()`` closure per mode (each blocks until its step is done)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from fedjax_room.dp.optimizer import dpsgd, make_dp_train_step
    from fedjax_room.models import init_params, make_loss_fn

    spec = _spec(model)
    loss_fn = make_loss_fn(spec)
    rng = np.random.default_rng(0)
    batch = {
        "x": jnp.asarray(rng.standard_normal((BATCH, 28, 28, 1), np.float32)),
        "y": jnp.asarray(rng.integers(0, 10, BATCH, np.int32)),
    }
    mask = jnp.ones((BATCH,), bool)
    runs = {}
    for mode in modes:
        params = init_params(spec, jax.random.key(0))
        if mode == "nonprivate":
            tx = optax.sgd(LEARNING_RATE)

            def nonprivate_step(params, opt_state, batch, mask, tx=tx):
                loss, grads = jax.value_and_grad(loss_fn)(params, batch)
                updates, opt_state = tx.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), opt_state, {"loss": loss}

            step = jax.jit(nonprivate_step)
        else:
            tx = dpsgd(
                LEARNING_RATE,
                clip_norm=CLIP_NORM,
                noise_multiplier=NOISE_MULTIPLIER,
                expected_batch_size=BATCH,
                key=jax.random.key(1),
            )
            step = make_dp_train_step(loss_fn, tx, clip_norm=CLIP_NORM, method=mode.removeprefix("dp_"))
        state = {"params": params, "opt": tx.init(params)}

        def run_step(step=step, state=state) -> None:
            state["params"], state["opt"], metrics = step(state["params"], state["opt"], batch, mask)
            jax.block_until_ready((state["params"], metrics))

        runs[mode] = run_step
    return runs


def _torch_model(model: str) -> Any:
    from torch import nn

    if model == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
        )
    return nn.Sequential(
        nn.Conv2d(1, 16, 8, 2, padding=3),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, 2),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 32),
        nn.Tanh(),
        nn.Linear(32, 10),
    )


def _torch_steps(model: str, modes: list[str]) -> dict[str, Callable[[], None]]:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    x = torch.randn(BATCH, 1, 28, 28)
    y = torch.randint(0, 10, (BATCH,))
    runs = {}
    for mode in modes:
        torch.manual_seed(0)
        net = _torch_model(model)
        criterion = torch.nn.CrossEntropyLoss()
        if mode == "torch_nonprivate":
            module, optimizer = net, torch.optim.SGD(net.parameters(), lr=LEARNING_RATE)
        elif mode == "opacus_hooks":
            from opacus import GradSampleModule
            from opacus.optimizers import DPOptimizer

            module = GradSampleModule(net)
            optimizer = DPOptimizer(
                torch.optim.SGD(module.parameters(), lr=LEARNING_RATE),
                noise_multiplier=NOISE_MULTIPLIER,
                max_grad_norm=CLIP_NORM,
                expected_batch_size=BATCH,
            )
        else:
            from opacus.grad_sample import GradSampleModuleFastGradientClipping
            from opacus.optimizers import DPOptimizerFastGradientClipping
            from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

            module = GradSampleModuleFastGradientClipping(net, max_grad_norm=CLIP_NORM, use_ghost_clipping=True)
            optimizer = DPOptimizerFastGradientClipping(
                torch.optim.SGD(module.parameters(), lr=LEARNING_RATE),
                noise_multiplier=NOISE_MULTIPLIER,
                max_grad_norm=CLIP_NORM,
                expected_batch_size=BATCH,
            )
            criterion = DPLossFastGradientClipping(module, optimizer, criterion)

        def run_step(module=module, optimizer=optimizer, criterion=criterion) -> None:
            optimizer.zero_grad()
            loss = criterion(module(x), y)
            loss.backward()
            optimizer.step()

        runs[mode] = run_step
    return runs


def _worker(kind: str, model: str, modes: list[str], warmup: int, steps: int) -> None:
    """``kind`` "time": interleave the modes step by step; "memory": one mode, peak RSS."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    if os.environ.get("DP_STEP_THREADS") and hasattr(os, "sched_setaffinity"):
        # Pin the worker to that many cores before any framework starts its thread pools: XLA:CPU
        # sizes its pools from the affinity mask (it has no thread-count flag), PyTorch is also
        # told by torch.set_num_threads below.
        cpus = sorted(os.sched_getaffinity(0))[: int(os.environ["DP_STEP_THREADS"])]
        os.sched_setaffinity(0, cpus)
    if any(m in JAX_MODES for m in modes):
        import jax  # noqa: F401  (imported before measuring the base RSS)
    if any(m in TORCH_MODES for m in modes):
        import opacus  # noqa: F401
        import torch

        if os.environ.get("DP_STEP_THREADS"):
            torch.set_num_threads(int(os.environ["DP_STEP_THREADS"]))
    base_rss = _rss_mb()
    jax_modes = [m for m in modes if m in JAX_MODES]
    runs = _jax_steps(model, jax_modes) if jax_modes else {}
    torch_modes = [m for m in modes if m in TORCH_MODES]
    if torch_modes:
        runs.update(_torch_steps(model, torch_modes))
    out: dict[str, Any] = {"base_rss_mb": base_rss, "compile_s": {}, "times": {m: [] for m in modes}}
    for mode in modes:
        t0 = time.perf_counter()
        for _ in range(warmup):
            runs[mode]()
        out["compile_s"][mode] = time.perf_counter() - t0
    # Round-robin, rotating the order each round, so the (shared, noisy) machine's load
    # hits every mode alike.
    for i in range(steps):
        for mode in modes[i % len(modes) :] + modes[: i % len(modes)]:
            t0 = time.perf_counter()
            runs[mode]()
            out["times"][mode].append((time.perf_counter() - t0) * 1e3)
    out["peak_rss_mb"] = _peak_rss_mb()
    if "jax" in sys.modules:
        import jax

        out["backend"] = jax.default_backend()
    if "torch" in sys.modules:
        import torch

        out["torch_threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(out), flush=True)


def _torch_available() -> bool:
    try:
        import opacus  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _spawn(
    kind: str, model: str, modes: list[str], warmup: int, steps: int, xla_flags: str, threads: int | None
) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, model, ",".join(modes)]
    cmd += ["--warmup", str(warmup), "--steps", str(steps)]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    if threads:
        env["DP_STEP_THREADS"] = str(threads)
    if xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(lines[-1][len("RESULT ") :])


def _measure(
    model: str,
    modes: list[str],
    warmup: int,
    steps: int,
    rounds: int,
    memory: bool,
    xla_flags: str,
    threads: int | None,
    log: Any,
) -> list[dict[str, Any]]:
    rows = {mode: {"model": model, "mode": mode, "times": [], "compile_s": []} for mode in modes}
    if threads == 1:
        # Single-threaded frameworks do not disturb each other (no idle OpenMP threads spinning), so
        # the modes share one process and one round-robin: the fairest comparison on a busy machine.
        # Except the modes that materialise every per-example gradient (~0.7 GB a step on the MLP):
        # releasing that memory slows whichever step runs next on the same core (the MLP `dp_fast`
        # step measured 13 ms alone, 47 ms right after a `dp_vmap` step), so they get their own process.
        groups = [g for g in ([m for m in modes if m not in HEAVY_MODES], [m for m in modes if m in HEAVY_MODES]) if g]
    else:
        groups = [g for g in ([m for m in modes if m in JAX_MODES], [m for m in modes if m in TORCH_MODES]) if g]
    for r in range(rounds):
        for group in groups if r % 2 == 0 else groups[::-1]:
            out = _spawn("time", model, group, warmup, steps, xla_flags, threads)
            log(f"{model} {','.join(group)} round {r + 1}/{rounds}: {out.get('error', 'ok')}")
            for mode in group:
                if "error" in out:
                    rows[mode]["error"] = out["error"]
                    continue
                rows[mode]["times"] += out["times"][mode]
                rows[mode]["compile_s"].append(out["compile_s"][mode])
                for key in ("backend", "torch_threads"):
                    if key in out:
                        rows[mode][key] = out[key]
    if memory:
        for mode in modes:
            out = _spawn("memory", model, [mode], 2, 2, xla_flags, threads)
            log(f"{model} {mode} memory: {out.get('error', 'ok')}")
            if "error" not in out:
                rows[mode]["peak_rss_mb"] = round(out["peak_rss_mb"], 1)
                rows[mode]["base_rss_mb"] = round(out["base_rss_mb"], 1)
    result = []
    for row in rows.values():
        times = sorted(row.pop("times"))
        if times and "error" not in row:
            row["median_ms"] = round(statistics.median(times), 3)
            row["p10_ms"] = round(times[len(times) // 10], 3)
            row["p90_ms"] = round(times[(9 * len(times)) // 10], 3)
            row["steps"] = len(times)
        row["compile_s"] = round(max(row["compile_s"]), 2) if row["compile_s"] else None
        result.append(row)
    return result


def _ratios(rows: list[dict[str, Any]]) -> None:
    by = {(r["model"], r["mode"]): r.get("median_ms") for r in rows}
    for row in rows:
        ms = row.get("median_ms")
        base = by.get((row["model"], "torch_nonprivate" if row["mode"] in TORCH_MODES else "nonprivate"))
        row["vs_own_nonprivate"] = ms / base if ms and base else None
        if row["mode"] == "dp_fast":
            for peer in ("opacus_hooks", "opacus_ghost"):
                other = by.get((row["model"], peer))
                row[f"vs_{peer}"] = ms / other if ms and other else None


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'model':<5} {'mode':<17} {'median ms':>10} {'p10-p90 ms':>16} {'x own non-DP':>13} "
        f"{'peak RSS MB':>12} {'(+ over base)':>14}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<5} {r['mode']:<17} ERROR {r['error'][:100]}")
            continue
        ratio = r.get("vs_own_nonprivate")
        spread = f"{r['p10_ms']:.1f}-{r['p90_ms']:.1f}"
        peak = f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "-"
        extra = f"+{r['peak_rss_mb'] - r['base_rss_mb']:.0f}" if "peak_rss_mb" in r else "-"
        lines.append(
            f"{r['model']:<5} {r['mode']:<17} {r['median_ms']:>10.2f} {spread:>16} "
            f"{(f'{ratio:.2f}' if ratio else '-'):>13} {peak:>12} {extra:>14}"
        )
    lines.append("")
    for r in rows:
        if r["mode"] == "dp_fast" and "error" not in r:
            peers = ("opacus_hooks", "opacus_ghost")
            parts = [f"{peer} {r[f'vs_{peer}']:.2f}x" for peer in peers if r.get(f"vs_{peer}")]
            if parts:
                lines.append(f"{r['model']}: fedjax_room dp_fast time / Opacus time: {', '.join(parts)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: mlp,cnn")
    parser.add_argument("--modes", default=None, help="comma-separated subset of modes (default: all available)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode per round")
    parser.add_argument("--rounds", type=int, default=2, help="timing processes per framework (medians pool them)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-mode peak-RSS subprocesses")
    parser.add_argument(
        "--xla-flags",
        default=DEFAULT_XLA_FLAGS,
        help=f"appended to XLA_FLAGS for the JAX workers (default {DEFAULT_XLA_FLAGS!r}; '' for XLA's defaults)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="pin each worker to this many cores, so JAX (XLA:CPU) and PyTorch run on N threads each "
        "(default: each framework's own default); 1 gives steadier, like-for-like numbers on a busy shared machine",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "MODEL", "MODES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, model, modes = args.worker
        _worker(kind, model, modes.split(","), args.warmup, args.steps)
        return 0
    models = [m for m in args.models.split(",") if m]
    modes = list(JAX_MODES) + (list(TORCH_MODES) if _torch_available() else [])
    wanted = args.modes.split(",") if args.modes else modes
    unknown = (set(wanted) - set(JAX_MODES + TORCH_MODES)) | (set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown modes/models: {sorted(unknown)}")
    if args.steps < 1 or args.rounds < 1 or args.warmup < 1:
        parser.error("--steps, --rounds and --warmup must be >= 1")
    if not _torch_available():
        print("torch/opacus not installed: skipping the PyTorch modes (pip install -e '.[bench]')", file=sys.stderr)
    modes = [m for m in modes if m in wanted]
    log = lambda msg: print(f"  {msg}", file=sys.stderr, flush=True)
    rows = []
    for model in models:
        rows += _measure(
            model, modes, args.warmup, args.steps, args.rounds, not args.no_memory, args.xla_flags, args.threads, log
        )
    for row in rows:
        if row["mode"] in JAX_MODES:
            row["xla_flags"] = args.xla_flags
        row["threads"] = args.threads or "default"
    _ratios(rows)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
