"""Privacy-utility: DP federated accuracy at epsilon 3 per site against central baselines and Flower + Opacus.

    python benchmarks/utility.py                    # every case, 3 seeds (about 20 minutes on 2 cores)
    python benchmarks/utility.py --quick            # digits and MNIST-5k, 1 seed, no Flower column
    python benchmarks/utility.py --cases digits --seeds 0,1,2
    python benchmarks/utility.py --json             # one JSON document instead of the table
    python benchmarks/utility.py --set rounds=8 --set learning_rate=1.0   # the room with other options

Every case is split the same way for every system (``load_builtin(name, seed)``, a 20% central test split that
no site holds, the rest partitioned over the sites: IID, or Dirichlet label skew), and every system is measured
on the same central test split, in the same run, for each seed:

  room             one room run through the real round engine (fedjax_room.sim.LoopbackRoom: the coordinator
                   and site machines, the sites' privacy plans, ledgers, DP-SGD and noised evaluation) with
                   RunConfig's DEFAULTS (what room.train, %%room train and the sidebar give) and the dataset's
                   recipe over them (fedjax_room.sim.demo.DEMO_RECIPES, what `fedjax-room demo --dataset D`
                   runs: fraud 300 rounds), at target_epsilon 3 per site, delta 1e-5 (training and evaluation
                   releases together); --set options go over both, for every system
  central          non-private: Adam on the union of the sites' training data (train_central)
  central DP-SGD   DP-SGD on the union at the same epsilon (all of it for training), the room's recipe
                   (same clip norm, learning rate, local optimiser and steps; batch = sites x batch_size)
  flower+opacus    with the [bench] extra: Flower's FedAvg strategy and NumPyClient API driven in process (no
                   Ray), each client a PyTorch copy of the same model made private with Opacus's
                   make_private_with_epsilon(target_epsilon=3, delta 1e-5, epochs over the whole run), on the
                   same partitions

The table shows medians over the seeds (each seed's figure in --json), and the gaps: central minus room, and
room minus flower+opacus. For fraud (2% positives) it also shows AUC-PR (average precision of P(fraud)).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np

EPSILON = 3.0
DELTA = 1e-5


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case: a built-in dataset split over ``sites`` (``alpha``: Dirichlet label skew). Its model, run
    options and central baseline's epochs are the demo's recipe for the dataset (``DEMO_RECIPES``), so the benchmark
    measures what ``fedjax-room demo --dataset D`` trains."""

    name: str
    dataset: str
    sites: int
    alpha: float | None

    @property
    def _recipe(self) -> dict[str, Any]:
        from fedjax_room.sim.demo import DEMO_RECIPES

        return DEMO_RECIPES[self.dataset]

    @property
    def family(self) -> str:
        return str(self._recipe["model"][0])

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self._recipe["model"][1])

    @property
    def central_epochs(self) -> int:
        return int(self._recipe["baseline_epochs"])

    @property
    def recipe(self) -> dict[str, Any]:
        """The run options the recipe changes from RunConfig's defaults."""
        return dict(self._recipe["train"])


CASES = {
    "digits": Case("digits", "digits", 3, None),
    "mnist": Case("mnist", "mnist", 5, 0.5),
    "breast_cancer": Case("breast_cancer", "breast_cancer", 3, None),
    "fraud": Case("fraud", "fraud", 4, None),
}
CASE_TITLES = {
    "digits": "digits, 3 IID sites",
    "mnist": "MNIST-5k, 5 sites, Dirichlet 0.5",
    "breast_cancer": "breast_cancer, 3 IID sites",
    "fraud": "fraud, 4 IID sites",
}
QUICK_CASES = ("digits", "mnist")


# ---------------------------------------------------------------------- data


def split(case: Case, seed: int) -> tuple[Any, Any, list[Any]]:
    """``(pooled train, central test, per-site train)`` exactly as fedjax_room.sim.harness splits it."""
    from fedjax_room.data import load_builtin, partition

    full = load_builtin(case.dataset, seed=seed)
    train, test = full.split(0.2, seed=seed)
    if case.alpha is None:  # equal IID shares: one compiled step for every site
        train = train.subset(np.arange(len(train) - len(train) % case.sites))
    sites = partition(train, case.sites, alpha=case.alpha, seed=seed)
    return train, test, sites


def model_spec(case: Case, dataset: Any) -> Any:
    from fedjax_room.models import spec_from_schema

    return spec_from_schema(dataset.schema, case.family, **case.model_kwargs)


def scores(spec: Any, params: Any, test: Any) -> dict[str, float]:
    """Accuracy, and for a binary task AUC-PR of the positive class, on ``test``."""
    import jax
    import jax.numpy as jnp

    from fedjax_room.local import evaluate
    from fedjax_room.models import make_predict_fn

    out = {"accuracy": evaluate(spec, params, test).accuracy}
    if test.num_classes == 2:
        from sklearn.metrics import average_precision_score

        logits = np.asarray(jax.jit(make_predict_fn(spec))(params, jnp.asarray(test.x)))
        out["auc_pr"] = float(average_precision_score(test.y, jax.nn.softmax(logits, axis=-1)[:, 1]))
    return out


# ---------------------------------------------------------------------- systems


def room_config(seed: int, overrides: dict[str, Any]) -> Any:
    """RunConfig's defaults at target epsilon 3 per site (delta 1e-5), plus ``overrides``."""
    from fedjax_room.protocol.config import RunConfig

    return RunConfig.from_dict({"target_epsilon": EPSILON, "delta": DELTA, "seed": seed, **overrides})


def run_room(case: Case, seed: int, overrides: dict[str, Any], *, cap: float = 10.0) -> dict[str, Any]:
    """One room run on the real round engine; the final global model scored on the central test split."""
    from fedjax_room.sim.loopback import LoopbackRoom, SiteSetup

    _, test, sites = split(case, seed)
    spec = model_spec(case, test)
    config = room_config(seed, overrides)
    chunks = np.array_split(np.arange(len(test)), case.sites)
    setups = {
        f"site-{i:02d}": SiteSetup(sites[i], test.subset(chunks[i]), {"epsilon_cap": cap}) for i in range(case.sites)
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedjax-utility-") as tmp:
        room = LoopbackRoom(tmp, setups, seed=seed)
        try:
            result = room.train(spec, config)
        finally:
            room.close()
    if result.status != "finished":
        raise RuntimeError(f"room run {result.status}: {result.error}")
    out = scores(spec, result.params, test)
    out["epsilon"] = max(float(p["epsilon"]) for p in result.privacy.values())
    out["seconds"] = time.perf_counter() - started
    return out


def run_central(case: Case, seed: int) -> dict[str, Any]:
    """The non-private baseline on the union of the sites' training data."""
    from fedjax_room.local import train_central

    pooled, test, _ = split(case, seed)
    spec = model_spec(case, test)
    params = train_central(spec, pooled, case.central_epochs, seed, learning_rate=1e-2)
    return scores(spec, params, test)


def run_central_dp(case: Case, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """DP-SGD on the union at the same epsilon (all of it for training), with the room's recipe: each "round" runs
    ``local_steps`` DP-SGD steps (expected batch ``sites x batch_size``) and the room's server optimiser applies
    the change, ``rounds`` times; the noise is calibrated for all ``rounds x local_steps`` steps."""
    import jax

    from fedjax_room.dp.accounting import calibrate_noise
    from fedjax_room.local import LocalTrainer
    from fedjax_room.local.trainer import _key
    from fedjax_room.models import init_params
    from fedjax_room.robust.server import room_optimizer, training_params

    pooled, test, _ = split(case, seed)
    spec = model_spec(case, test)
    config = room_config(seed, overrides)
    # distributed noise (the default under secure aggregation): one step on all the records per round
    batch = len(pooled) if config.distributed_noise else config.batch_size * case.sites
    q = min(1.0, batch / len(pooled))
    steps = config.rounds * config.local_steps
    sigma = calibrate_noise(target_epsilon=EPSILON, delta=DELTA, sampling_rate=q, steps=steps)
    trainer = LocalTrainer(
        spec,
        clip_norm=config.clip_norm,
        noise_multiplier=sigma,
        batch_size=batch,
        learning_rate=config.learning_rate,
        optimizer=config.local_optimizer,
    )
    opt = room_optimizer(config)  # and the room's model average
    params = jax.tree.map(np.asarray, init_params(spec, _key(seed)))
    state = opt.init(params)
    for r in range(config.rounds):
        start = training_params(params, state)  # the iterate, when the released model is an average
        new, _ = trainer.train(start, pooled, config.local_steps, seed * 100_003 + r)
        delta = jax.tree.map(lambda a, b: np.asarray(a, np.float32) - b, new, start)
        params, state = opt.update(delta, state, params)
    return {**scores(spec, params, test), "noise_multiplier": sigma}


def run_flower_opacus(case: Case, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Flower's strategy and NumPyClient API driven in process (no Ray), Opacus DP-SGD in every client.

    Each client is a PyTorch copy of the case's model with SGD (momentum 0.9 when the room's local optimiser is
    ``momentum``) made private by ``PrivacyEngine.make_private_with_epsilon`` at epsilon 3 (delta 1e-5) for the
    whole run: the room's recipe (rounds, local steps, expected batch size, clip norm, learning rate) with Poisson
    sampling; the server is Flower's FedAvg, or FedAdam / FedYogi when the room's defaults use those. All of
    the epsilon goes to training (the room also spends a share on its noised evaluation).
    """
    import flwr.server.strategy as fs
    import torch
    from flwr.client import NumPyClient
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from opacus import PrivacyEngine

    _, test, sites = split(case, seed)
    config = room_config(seed, overrides)
    hidden = tuple(case.model_kwargs.get("hidden", (32,) if case.family == "mlp" else ()))
    if case.family == "scatter":
        # the same fixed scattering transform the room's sites compute (fedjax_room.local.features): each
        # client trains the head, a PyTorch copy of the room's, on its records' coefficients
        from fedjax_room.local.features import prepare

        spec = model_spec(case, test)
        sites = [prepare(spec, site).dataset for site in sites]
        test = prepare(spec, test).dataset
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    d = int(np.prod(test.schema.feature_shape))
    classes = test.num_classes

    def net() -> torch.nn.Module:
        if not hidden:
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, classes))
        layers: list[torch.nn.Module] = [torch.nn.Flatten()]
        width = d
        for h in hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        return torch.nn.Sequential(*layers, torch.nn.Linear(width, classes))

    def get(model: torch.nn.Module) -> list[np.ndarray]:
        return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]

    def put(model: torch.nn.Module, arrays: list[np.ndarray]) -> None:
        keys = list(model.state_dict().keys())
        model.load_state_dict({k: torch.tensor(a) for k, a in zip(keys, arrays, strict=True)}, strict=True)

    class OpacusClient(NumPyClient):  # type: ignore[misc]
        def __init__(self, data: Any, index: int) -> None:
            self.n = len(data)
            ds = torch.utils.data.TensorDataset(
                torch.tensor(data.x.reshape(len(data), -1)), torch.tensor(data.y, dtype=torch.long)
            )
            # the room's recipe: every record every step with distributed noise (q = 1), else the expected batch
            batch = self.n if config.distributed_noise else min(config.batch_size, self.n)
            loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True)
            self.model = net()
            momentum = 0.9 if config.local_optimizer == "momentum" else 0.0
            optimizer = torch.optim.SGD(self.model.parameters(), lr=config.learning_rate, momentum=momentum)
            steps = config.rounds * config.local_steps
            self.engine = PrivacyEngine(accountant="prv")
            self.module, self.optimizer, self.loader = self.engine.make_private_with_epsilon(
                module=self.model,
                optimizer=optimizer,
                data_loader=loader,
                target_epsilon=EPSILON,
                target_delta=DELTA,
                epochs=steps * batch / self.n,  # make_private_with_epsilon counts epochs / sample_rate steps
                max_grad_norm=config.clip_norm,
                poisson_sampling=True,
            )
            self.generator = torch.Generator().manual_seed(seed * 1000 + index)

        def fit(self, parameters: list[np.ndarray], cfg: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
            put(self.model, parameters)
            loss_fn = torch.nn.CrossEntropyLoss()
            done = 0
            while done < config.local_steps:
                for x, y in self.loader:
                    if done >= config.local_steps:
                        break
                    self.optimizer.zero_grad()
                    if len(y):
                        loss_fn(self.module(x), y).backward()
                    self.optimizer.step()
                    done += 1
            return get(self.model), self.n, {"epsilon": self.engine.get_epsilon(DELTA)}

    clients = [OpacusClient(site, i) for i, site in enumerate(sites)]
    initial = ndarrays_to_parameters(get(net()))
    if config.server_optimizer == "fedavg":
        strategy: Any = fs.FedAvg(initial_parameters=initial)
        server_lr = config.server_learning_rate
    else:
        cls = {"fedadam": fs.FedAdam, "fedyogi": fs.FedYogi}[config.server_optimizer]
        strategy = cls(initial_parameters=initial, eta=config.server_learning_rate, beta_1=0.9, beta_2=0.99, tau=1e-3)
        server_lr = 1.0
    params = strategy.initialize_parameters(None)
    ok = Status(code=Code.OK, message="")
    epsilon = 0.0
    for rnd in range(1, config.rounds + 1):
        current = parameters_to_ndarrays(params)
        results = []
        for c in clients:
            arrays, n, metrics = c.fit(current, {})
            epsilon = max(epsilon, float(metrics["epsilon"]))
            fit = FitRes(status=ok, parameters=ndarrays_to_parameters(arrays), num_examples=n, metrics={})
            results.append((None, fit))
        new, _ = strategy.aggregate_fit(rnd, results, [])
        if server_lr != 1.0:  # FedAvg with a server learning rate: old + lr * (average - old)
            arrays = [o + server_lr * (a - o) for o, a in zip(current, parameters_to_ndarrays(new), strict=True)]
            new = ndarrays_to_parameters(arrays)
        params = new
    model = net()
    put(model, parameters_to_ndarrays(params))
    with torch.no_grad():
        logits = model(torch.tensor(test.x.reshape(len(test), -1))).numpy()
    out = {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == test.y)), "epsilon": epsilon}
    if classes == 2:
        from sklearn.metrics import average_precision_score

        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        out["auc_pr"] = float(average_precision_score(test.y, p[:, 1] / p.sum(axis=1)))
    return out


def flower_available() -> str | None:
    """None when Flower, PyTorch and Opacus import; else why not."""
    try:
        import flwr  # noqa: F401
        import opacus  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[bench]')"
    return None


# ---------------------------------------------------------------------- the table


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in args.set or []:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value[:1] in "0123456789-[{tfn" and value not in ("fedavg",) else value
    seeds = [int(s) for s in args.seeds.split(",")]
    cases = args.cases.split(",")
    why_no_flower = "skipped (--no-flower)" if args.no_flower else flower_available()
    out: dict[str, Any] = {"overrides": overrides, "seeds": seeds, "flower": why_no_flower or "ran", "cases": {}}
    for name in cases:
        case = CASES[name]
        options = {**case.recipe, **overrides}
        out.setdefault("recipes", {})[name] = options
        rows: dict[str, list[dict[str, Any]]] = {"room": [], "central": [], "central_dp": [], "flower_opacus": []}
        for seed in seeds:
            rows["room"].append(run_room(case, seed, options))
            rows["central"].append(run_central(case, seed))
            rows["central_dp"].append(run_central_dp(case, seed, options))
            if why_no_flower is None:
                rows["flower_opacus"].append(run_flower_opacus(case, seed, options))
            done = {k: f"{v[-1]['accuracy']:.3f}" for k, v in rows.items() if v}
            print(f"  {name} seed {seed}: {done}", file=sys.stderr, flush=True)
        out["cases"][name] = rows
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        f"epsilon {EPSILON:g} per site, delta {DELTA:g}; medians over seeds {result['seeds']}; "
        f"flower+opacus: {result['flower']}",
        "",
        "| case | room (DP federated) | central non-private | central DP-SGD | flower+opacus | "
        "gap to central | room - flower |",
        "|---|---|---|---|---|---|---|",
    ]
    recipes = {name: r for name, r in result.get("recipes", {}).items() if r}
    if recipes:
        lines.insert(1, "recipes over the defaults: " + "; ".join(f"{n} {json.dumps(r)}" for n, r in recipes.items()))
    for name, rows in result["cases"].items():
        med = {k: _median([r["accuracy"] for r in v]) if v else float("nan") for k, v in rows.items()}

        def cell(key: str, rows: dict[str, Any] = rows, med: dict[str, float] = med) -> str:
            if not rows[key]:
                return "-"
            text = f"{med[key]:.3f}"
            if "auc_pr" in rows[key][0]:
                text += f" (AUC-PR {_median([r['auc_pr'] for r in rows[key]]):.3f})"
            return text

        flower_gap = "-" if not rows["flower_opacus"] else f"{med['room'] - med['flower_opacus']:+.3f}"
        lines.append(
            f"| {CASE_TITLES[name]} | {cell('room')} | {cell('central')} | {cell('central_dp')} | "
            f"{cell('flower_opacus')} | {med['central'] - med['room']:.3f} | {flower_gap} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="digits and MNIST-5k, seed 0, no Flower column")
    parser.add_argument("--no-flower", action="store_true", help="skip Flower + Opacus even if installed")
    parser.add_argument("--set", action="append", metavar="OPTION=VALUE", help="a room run option over defaults")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.cases = ",".join(c for c in args.cases.split(",") if c in QUICK_CASES) or ",".join(QUICK_CASES)
        args.seeds = args.seeds.split(",")[0]
        args.no_flower = True
    logging.getLogger("fedjax_room").setLevel(logging.ERROR)  # the per-round held-out loss notes
    started = time.perf_counter()
    result = run(args)
    result["seconds"] = time.perf_counter() - started
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
