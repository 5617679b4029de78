"""An embedded room on this machine, and the ``fedjax-room demo`` that drives it.

:func:`start_room` makes a complete room under one state directory::

    STATE/coordinator/          the coordinator's state (room.sqlite3, checkpoints, audit.jsonl, coordinator.url)
    STATE/keys/                 Ed25519 keys of the analyst and every site (enrolled in the coordinator), the
                                room manifest (room-manifest.json: every site's key and the coordinator's,
                                signed by every site) and coordinator.key.pub, which every client pins
    STATE/sites/<name>/         train.npz, heldout.npz and policy.toml of one site, and its state/
                                (ledger.json, releases, audit.jsonl)
    STATE/central_test.npz      a test split no site ever gets (the demo's final evaluation)
    STATE/logs/                 one log per process

It partitions a built-in dataset (IID or Dirichlet label skew), starts the coordinator and one
process per site (``python -m fedjax_room coordinator|site``) on 127.0.0.1, and returns once every
site is connected. :meth:`EmbeddedRoom.stop` ends the processes (SIGTERM, then SIGKILL).

:func:`run_demo` is the command: it trains a DP federated model from the analyst client with a live
progress bar and a per-round table, then evaluates the final global model on the central test split
— which only the demo holds, because it generated the partitions — next to a non-private model
trained centrally on the union of the sites' training data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedjax_room.errors import ConfigError, StateError
from fedjax_room.protocol.config import protections
from fedjax_room.sim.launch import spawn_coordinator, spawn_site, stop_process

__all__ = [
    "DEMO_ATTACKS",
    "DEMO_POLICY",
    "DEMO_RECIPES",
    "AnalystDemo",
    "EmbeddedRoom",
    "check_demo",
    "run_demo",
    "start_room",
    "write_room_manifest",
]

#: Per dataset: the model the demo trains, the run options it changes from RunConfig's defaults (``train``) and its
#: central baseline's epochs. The defaults are tuned for epsilon 3 per site over a few thousand records
#: (``benchmarks/utility.py``, which runs the same recipes); room.train and the sidebar give them too. Fraud's 16,000
#: records make each full-batch step's noise (``sigma C / N``) a tenth of digits', so more steps pay: 300 rounds lift
#: its AUC-PR from 0.18 to 0.40 (central non-private 0.43) at the same epsilon.
DEMO_RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"model": ("scatter", {}), "train": {}, "baseline_epochs": 30},
    "breast_cancer": {"model": ("logistic", {}), "train": {}, "baseline_epochs": 30},
    "fraud": {"model": ("mlp", {"hidden": (16,)}), "train": {"rounds": 300}, "baseline_epochs": 5},
    "mnist": {"model": ("scatter", {}), "train": {}, "baseline_epochs": 10},
}


def _site_names(n: int) -> list[str]:
    if n <= 26:
        return [f"site-{chr(ord('a') + i)}" for i in range(n)]
    return [f"site-{i + 1}" for i in range(n)]


@dataclasses.dataclass
class EmbeddedRoom:
    """A room running on this machine. Use as a context manager, or call :meth:`stop`."""

    url: str
    analyst_key: Path
    state_dir: Path
    site_names: list[str]
    dataset: str
    processes: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    #: the state directory is a temporary one start_room made (no ``state_dir`` given): :meth:`stop` removes it
    temporary: bool = False

    @property
    def manifest_path(self) -> Path:
        """The room manifest every site and the analyst pin (``STATE/keys/room-manifest.json``)."""
        return self.state_dir / "keys" / "room-manifest.json"

    @property
    def coordinator_key(self) -> Path:
        """The coordinator's public room key file (``STATE/keys/coordinator.key.pub``)."""
        return self.state_dir / "keys" / "coordinator.key.pub"

    @property
    def coordinator_dir(self) -> Path:
        """The coordinator's state directory."""
        return self.state_dir / "coordinator"

    def site_dir(self, name: str) -> Path:
        """One site's folder (its data, policy and ``state/``)."""
        return self.state_dir / "sites" / name

    def connect(self, **kwargs: Any) -> Any:
        """A :class:`~fedjax_room.analyst.client.Room` connected as the analyst."""
        from fedjax_room.analyst import presence
        from fedjax_room.analyst.client import connect

        kwargs.setdefault("coordinator_key", self.manifest_path)
        room = connect(self.url, key=self.analyst_key, **kwargs)
        # what the Jupyter sidebar shows for this room when a notebook's kernel opened it (analyst/presence.py)
        presence.describe(room, kind="demo", dataset=self.dataset, site_names=list(self.site_names))
        return room

    def central_test(self) -> Any:
        """The held-back central test split (no site has it): the analyst's own labelled data in the demo."""
        from fedjax_room.data import load_dataset

        return load_dataset(self.state_dir / "central_test.npz")

    def for_analyst(self) -> AnalystDemo:
        """What the analyst's side gets of this room (``fedjax_room.jupyter.current_demo()``): no site's data."""
        return AnalystDemo(
            url=self.url,
            dataset=self.dataset,
            site_names=tuple(self.site_names),
            analyst_key=self.analyst_key,
            manifest=self.manifest_path,
            _test_path=self.state_dir / "central_test.npz",
        )

    def restart_coordinator(self, *, kill: bool = False) -> None:
        """Stop (``kill``: SIGKILL, no goodbye) and start the coordinator again on the same port."""
        proc = self.processes["coordinator"]
        if kill:
            proc.kill()
            proc.wait(10)
        else:
            stop_process(proc)
        port = int(self.url.rsplit(":", 1)[1])
        new, url = spawn_coordinator(self.coordinator_dir, port=port)
        self.processes["coordinator"] = new
        self.url = url

    def stop(self) -> None:
        """End every process of the room (sites first, then the coordinator); a temporary state directory (no
        ``state_dir`` given to :func:`start_room`) is removed with them."""
        sites = [p for n, p in self.processes.items() if n != "coordinator"]
        for proc in sites:  # all at once: they shut down in parallel
            if proc.poll() is None:
                proc.terminate()
        for proc in sites:
            stop_process(proc)
        coordinator = self.processes.get("coordinator")
        if coordinator is not None:
            stop_process(coordinator)
        self.processes.clear()
        if self.temporary:  # nothing of a room started without a state directory is left in /tmp
            import shutil

            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRoom:
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()


#: The policy every demo site gets unless told otherwise (``min_sites`` is ``min(2, sites)``): ``fedjax-room demo``
#: checks a run against it before it starts anything.
DEMO_POLICY: dict[str, Any] = {
    "epsilon_cap": 10.0,
    "delta_cap": 1e-5,
    # every DP exploration query kind (site/queries.py), up to epsilon 3 each, a third of the cap in all
    "queries": {
        "allowed": ["count", "count_by_label", "histogram", "sum", "mean", "quantiles", "missing"],
        "max_epsilon": 3.0,
        "epsilon_share": 0.34,
    },
}
#: The simulated attacks ``--attack`` offers (:data:`fedjax_room.robust.attacks.ATTACKS`, named here without JAX).
DEMO_ATTACKS = ("boost", "sign_flip", "label_flip", "gaussian")
#: The most sites an embedded room starts.
MAX_SITES = 64


@dataclasses.dataclass(frozen=True)
class AnalystDemo:
    """The analyst's handle on an embedded demo room, as ``%room demo`` hands it out (``current_demo()``).

    It has what a real analyst has: where the room is, the analyst's key and the room manifest to connect with
    (:meth:`connect`), the site names, and the analyst's own labelled data (:meth:`central_test`). That test split
    is handed to the analyst on purpose: the demo drew it from the dataset before partitioning the rest among the
    sites, and no site ever holds it, so it plays the part of the public or in-house data a real analyst evaluates
    on. The sites' rows (their ``train.npz`` / ``heldout.npz`` and folders) are not reachable from here: they stay
    with the site processes and the demo's own scoring code (:func:`_central_baseline_accuracy`, which returns only
    a score). The operator's :class:`EmbeddedRoom` (tests, the CLI) keeps ``site_dir`` for what an operator does.
    """

    url: str
    dataset: str
    site_names: tuple[str, ...]
    analyst_key: Path
    manifest: Path
    _test_path: Path = dataclasses.field(repr=False)

    def connect(self, **kwargs: Any) -> Any:
        """A :class:`~fedjax_room.analyst.client.Room` connected as the analyst (pinning the room manifest)."""
        from fedjax_room.analyst import presence
        from fedjax_room.analyst.client import connect

        kwargs.setdefault("coordinator_key", self.manifest)
        room = connect(self.url, key=self.analyst_key, **kwargs)
        presence.describe(room, kind="demo", dataset=self.dataset, site_names=list(self.site_names))
        return room

    def central_test(self) -> Any:
        """The analyst's own labelled evaluation data: a split of the dataset that no site holds."""
        from fedjax_room.data import load_dataset

        return load_dataset(self._test_path)


def _policy_for(policy: Any, sites: int) -> Any:
    from fedjax_room.site.policy import Policy

    if isinstance(policy, Policy):
        return policy
    defaults: dict[str, Any] = {**DEMO_POLICY, "min_sites": min(2, sites)}
    return Policy.from_dict({**defaults, **(policy or {})})


def _check_sites(sites: Any) -> int:
    if isinstance(sites, bool) or not isinstance(sites, int) or not 1 <= sites <= MAX_SITES:
        raise ConfigError(f"--sites must be an integer from 1 to {MAX_SITES}, got {sites!r}")
    return sites


def check_demo(
    *,
    sites: int,
    dataset: str,
    non_iid: float | None,
    attack: str | None,
    malicious: int,
    train: Mapping[str, Any],
) -> Any:
    """Every check ``fedjax-room demo`` can make before it starts a process; returns the run's
    :class:`~fedjax_room.protocol.config.RunConfig` (secure aggregation resolved), or raises :class:`ConfigError`
    naming the option to change.

    ``train`` are the options the demo will send to ``room.train``. Besides RunConfig's own rules (bounds, one of
    target and noise, a robust aggregator or ``exclude_below`` against secure aggregation, ...) it checks what the
    demo's sites would refuse, since the demo writes their policy (:data:`DEMO_POLICY`): a target epsilon above
    their cap (the target covers the whole run, so no setting of rounds or steps makes it fit), a delta above
    their delta cap, and ``min_sites`` outside what the room can do. Light: no JAX, no data loaded.
    """
    from fedjax_room.protocol.config import RunConfig

    _check_sites(sites)
    if dataset not in DEMO_RECIPES:
        raise ConfigError(f"unknown --dataset {dataset!r}; choose one of {', '.join(DEMO_RECIPES)}")
    if non_iid is not None and (
        isinstance(non_iid, bool) or not isinstance(non_iid, int | float) or not 0 < non_iid < math.inf
    ):
        raise ConfigError(f"--non-iid ALPHA must be a positive number (Dirichlet concentration), got {non_iid!r}")
    if attack is not None:
        if attack not in DEMO_ATTACKS:
            raise ConfigError(f"unknown --attack {attack!r}; choose one of {', '.join(DEMO_ATTACKS)}")
        if isinstance(malicious, bool) or not isinstance(malicious, int) or not 1 <= malicious <= sites:
            raise ConfigError(f"--malicious K must be an integer from 1 to --sites ({sites}), got {malicious!r}")
    config = RunConfig.from_dict(dict(train))
    if config.secure_aggregation and sites < 2:
        raise ConfigError("secure aggregation needs at least 2 sites (3 or more to hide anything); use --sites 3")
    cap, delta_cap = DEMO_POLICY["epsilon_cap"], DEMO_POLICY["delta_cap"]
    if config.target_epsilon is not None and config.target_epsilon > cap:
        raise ConfigError(
            f"--target-epsilon {config.target_epsilon:g} is above the demo sites' epsilon cap of {cap:g} (the target "
            f"covers the whole run, so each site would refuse it); use --target-epsilon {cap:g} or less"
        )
    if config.delta > delta_cap:
        raise ConfigError(
            f"--delta {config.delta:g} is above the demo sites' delta cap of {delta_cap:g}; use --delta {delta_cap:g} "
            "or less"
        )
    if config.min_sites is not None and not min(2, sites) <= config.min_sites <= sites:
        raise ConfigError(
            f"--min-sites {config.min_sites} is outside what this demo can do: from {min(2, sites)} (the demo "
            f"sites' own minimum cohort) to {sites} (--sites); use a value in that range or leave it unset"
        )
    return config


def start_room(
    sites: int = 3,
    dataset: str = "digits",
    non_iid: float | None = None,
    state_dir: str | Path | None = None,
    policy: Any = None,
    *,
    seed: int = 0,
    policies: Mapping[str, Any] | None = None,
    site_args: Mapping[str, list[str]] | None = None,
    attacks: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> EmbeddedRoom:
    """Start a coordinator and ``sites`` site processes on 127.0.0.1 over a partitioned built-in dataset.

    ``policy`` (a :class:`~fedjax_room.site.policy.Policy` or a dict of its settings) applies to every
    site; ``policies`` overrides it per site name. ``site_args`` adds command-line arguments per site.
    ``attacks`` (site name -> attack name) starts those sites as simulated attackers (:mod:`fedjax_room.sim.attacker`).
    Keys, enrollments and a site's ``state/`` already in ``state_dir`` are reused. Returns when every
    site is connected.
    """
    from fedjax_room.coordinator.store import Store
    from fedjax_room.data import load_builtin, partition, save_dataset
    from fedjax_room.identity import fingerprint, generate_key, load_private_key, public_key_bytes, save_private_key

    _check_sites(sites)
    from fedjax_room.files import private_dir

    state = private_dir(Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="fedjax-room-")))
    names = _site_names(sites)

    full = load_builtin(dataset, seed=seed)
    pool, central_test = full.split(0.2, seed=seed)
    save_dataset(central_test, state / "central_test.npz")
    parts = partition(pool, sites, alpha=non_iid, seed=seed)

    keys_dir = state / "keys"

    def key_for(name: str) -> Path:
        path = keys_dir / f"{name}.key"
        if not path.exists():
            save_private_key(generate_key(), path)
        return path

    store = Store.open(state / "coordinator")
    try:
        for name, role in [("analyst", "analyst"), *((n, "site") for n in names)]:
            key = load_private_key(key_for(name))
            store.enroll(name, role, public_key_bytes(key), fingerprint(key))
    finally:
        store.close()
    write_room_manifest(state / "coordinator", {n: key_for(n) for n in names}, keys_dir)

    for name, part in zip(names, parts, strict=True):
        folder = private_dir(state / "sites" / name)  # the site's records: 0700, its files 0600
        train, heldout = part.split(0.2, seed=seed)
        save_dataset(train, folder / "train.npz")
        save_dataset(heldout, folder / "heldout.npz")
        chosen = (policies or {}).get(name, policy)
        _policy_for(chosen, sites).save(folder / "policy.toml")

    room = EmbeddedRoom(
        url="",
        analyst_key=key_for("analyst"),
        state_dir=state,
        site_names=names,
        dataset=dataset,
        temporary=state_dir is None,
    )
    try:
        proc, url = spawn_coordinator(state / "coordinator", timeout=timeout)
        room.processes["coordinator"] = proc
        room.url = url
        for name in names:
            folder = state / "sites" / name
            room.processes[name] = spawn_site(
                url,
                key=key_for(name),
                data=folder / "train.npz",
                heldout=folder / "heldout.npz",
                policy=folder / "policy.toml",
                state_dir=folder / "state",
                name=name,
                log_dir=state / "logs",
                extra=["--manifest", str(room.manifest_path), *(site_args or {}).get(name, [])],
                attack=(attacks or {}).get(name),
            )
        wait_for_sites(room, names, timeout=timeout)
    except BaseException:
        room.stop()
        raise
    return room


def write_room_manifest(coordinator_dir: Path, site_keys: Mapping[str, Path], out_dir: Path) -> Path:
    """Make the coordinator's room key (if new), and write ``out_dir/room-manifest.json`` (signed by every
    site, whose private keys this embedded room holds) and ``out_dir/coordinator.key.pub``. Returns the
    manifest's path."""
    import shutil

    from fedjax_room.coordinator.server import coordinator_key
    from fedjax_room.identity import load_private_key, public_key_bytes
    from fedjax_room.room_manifest import create_manifest, save_manifest, sign_manifest

    room_key = coordinator_key(Path(coordinator_dir))
    keys = {name: load_private_key(path) for name, path in site_keys.items()}
    manifest = create_manifest({n: public_key_bytes(k) for n, k in keys.items()}, public_key_bytes(room_key))
    for name, key in keys.items():
        manifest = sign_manifest(manifest, name, key)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(coordinator_dir) / "coordinator.key.pub", out_dir / "coordinator.key.pub")
    return save_manifest(manifest, out_dir / "room-manifest.json")


def wait_for_sites(room: EmbeddedRoom, names: list[str], *, timeout: float = 120.0) -> None:
    """Block until every named site is connected to the room (raise :class:`StateError` after ``timeout``)."""
    deadline = time.monotonic() + timeout
    client = None
    try:
        while time.monotonic() < deadline:
            for name, proc in room.processes.items():
                if proc.poll() is not None:
                    log = room.state_dir / "logs" / f"{name}.log"
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    raise StateError(f"{name} exited with status {proc.returncode}; its log ends:\n{tail}")
            try:
                client = client or room.connect(timeout=10.0)
                connected = {s.name for s in client.sites() if s.status == "connected"}
            except (ConnectionError, TimeoutError):
                connected = set()
            if set(names) <= connected:
                return
            time.sleep(0.2)
        raise StateError(f"not every site connected within {timeout:g}s; see the logs in {room.state_dir / 'logs'}")
    finally:
        if client is not None:
            client.close()


# --------------------------------------------------------------------------------------------- the demo


def _spec_for(dataset: Any, recipe: dict[str, Any]) -> Any:
    from fedjax_room.models import spec_from_schema

    family, kwargs = recipe["model"]
    return spec_from_schema(dataset.schema, family, **kwargs)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "   -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def run_demo(
    *,
    sites: int = 3,
    dataset: str = "digits",
    rounds: int | None = None,
    target_epsilon: float | None = 3.0,
    non_iid: float | None = None,
    state_dir: str | Path | None = None,
    as_json: bool = False,
    seed: int = 0,
    out: Any = None,
    aggregator: str = "fedavg",
    attack: str | None = None,
    malicious: int = 1,
    exclude_below: float | None = None,
    secure_aggregation: bool | None = None,
    site_noise_multiplier: float | None = None,
    options: Mapping[str, Any] | None = None,
) -> int:
    """The ``fedjax-room demo`` command; returns the exit status.

    ``options``: any other RunConfig options for ``room.train``, over the dataset's recipe (``target_epsilon=None``
    with a ``noise_multiplier`` among them for fixed noise).

    Secure aggregation is on (``secure_aggregation=None``) unless the run needs each site's update: a robust
    aggregator, ``exclude_below``, or a simulated ``attack`` (whose point is to watch per-update defences), or
    the room has one site (nobody to mask it among). Every option is checked (:func:`check_demo`) before anything
    starts. ``site_noise_multiplier`` adds distributed DP (site-level privacy) on top of it.

    ``attack`` (``sign_flip | boost | label_flip | gaussian``) makes ``malicious`` sites simulated attackers
    (started as ``python -m fedjax_room.sim.attacker``: a test and demo feature) so that one can watch
    ``aggregator="fedavg"`` break and ``"median"`` hold.
    """
    if dataset not in DEMO_RECIPES:
        raise ConfigError(f"unknown --dataset {dataset!r}; choose one of {', '.join(DEMO_RECIPES)}")
    recipe = DEMO_RECIPES[dataset]
    # what room.train gets: the demo's base, the dataset's recipe, the options given, the named ones given
    train: dict[str, Any] = {"target_epsilon": target_epsilon, "delta": 1e-5, "seed": seed, "aggregator": aggregator}
    train.update(recipe["train"])
    train.update(options or {})
    if rounds is not None:
        train["rounds"] = rounds
    if exclude_below is not None:
        train["exclude_below"] = exclude_below
    if secure_aggregation is None and (attack or sites == 1):
        # a simulated attack's point is to watch the per-update defences; one site has nobody to be masked among
        secure_aggregation = False
    if secure_aggregation is not None:
        train["secure_aggregation"] = secure_aggregation
    if site_noise_multiplier is not None:
        train["site_noise_multiplier"] = site_noise_multiplier
    # every mistake is reported here, before a process, a directory or JAX is started
    config = check_demo(sites=sites, dataset=dataset, non_iid=non_iid, attack=attack, malicious=malicious, train=train)
    train["secure_aggregation"] = config.secure_aggregation  # resolved: shown, and sent

    out = out or sys.stdout
    started = time.perf_counter()
    temporary = state_dir is None  # a state directory the demo made is removed at the end; --state DIR is kept
    state = Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix="fedjax-room-"))
    try:
        return _run_demo(
            state=state,
            temporary=temporary,
            config=config,
            train=train,
            recipe=recipe,
            out=out,
            started=started,
            sites=sites,
            dataset=dataset,
            non_iid=non_iid,
            seed=seed,
            as_json=as_json,
            attack=attack,
            malicious=malicious,
        )
    finally:
        if temporary:
            import shutil

            shutil.rmtree(state, ignore_errors=True)


def _central_baseline_accuracy(er: EmbeddedRoom, spec: Any, test: Any, epochs: int, seed: int) -> float:
    """The demo's scoring code: a non-private model trained centrally on the union of the sites' training
    files, scored on the central test split. Only the score leaves this function: the demo (which wrote
    the partitions) reads the rows here, and nothing on the analyst's side can ask for them."""
    import numpy as np

    from fedjax_room.data import Dataset, load_dataset
    from fedjax_room.local import evaluate, train_central

    parts = [load_dataset(er.site_dir(n) / "train.npz") for n in er.site_names]
    pooled = Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]), parts[0].schema)
    params = train_central(spec, pooled, epochs, seed, learning_rate=1e-2)
    return float(evaluate(spec, params, test).accuracy)


def _run_demo(
    *,
    state: Path,
    temporary: bool,
    config: Any,
    train: dict[str, Any],
    recipe: dict[str, Any],
    out: Any,
    started: float,
    sites: int,
    dataset: str,
    non_iid: float | None,
    seed: int,
    as_json: bool,
    attack: str | None,
    malicious: int,
) -> int:
    from tqdm.auto import tqdm

    from fedjax_room.local import evaluate

    settings = config.to_dict()
    target_epsilon, aggregator = config.target_epsilon, config.aggregator

    def say(text: str = "") -> None:
        tqdm.write(text, file=out)

    say(
        f"Starting an embedded room: a coordinator and {sites} sites as separate processes on 127.0.0.1 "
        f"({dataset}{'' if non_iid is None else f', non-IID alpha={non_iid:g}'}) ..."
    )
    attacks: dict[str, str] = {}
    if attack:
        from fedjax_room.robust.attacks import choose_malicious, get_attack

        get_attack(attack)
        bad = [_site_names(sites)[i] for i in choose_malicious(sites, malicious, seed)]
        attacks = dict.fromkeys(bad, attack)
        say(f"Simulated attack: {', '.join(bad)} will send {attack!r} updates (a demo feature)")
    with start_room(sites=sites, dataset=dataset, non_iid=non_iid, state_dir=state, seed=seed, attacks=attacks) as er:
        say(f"Room {er.url}; sites {', '.join(er.site_names)} connected; state in {er.state_dir}")
        room = er.connect()
        try:
            for s in room.sites():
                say(
                    f"  {s.name}: {s.record_count} records, features {s.schema.get('feature_shape')}, "
                    f"classes {len(s.schema.get('classes', []))}, epsilon cap {s.policy.get('epsilon_cap')}"
                )
            test = er.central_test()
            spec = _spec_for(test, recipe)
            say(
                f"Training a {spec.family} model ({spec.param_count()} parameters) for {settings['rounds']} rounds, "
                + (
                    f"target epsilon {target_epsilon:g} per site"
                    if target_epsilon is not None
                    else f"noise multiplier {settings.get('noise_multiplier')}"
                )
                + f" (delta {settings.get('delta', 1e-5):g}), aggregator {aggregator} ..."
            )
            say("Protections: " + "; ".join(protections(config)))
            run = room.train(spec, **train)
            for line in run.defences_text().splitlines():
                say(f"  defence {line}")
            header = f"{'round':>5}  {'sites':>5}  {'loss*':>7}  {'acc*':>6}  epsilon so far per site"
            say(header)
            from fedjax_room.sim.progress import RoundBar  # says what round 1 waits for; its clock ticks

            bar = RoundBar(run, settings["rounds"], file=sys.stderr, disable=not sys.stderr.isatty() and as_json)
            for r in run.rounds():
                eps = "  ".join(f"{k}={v:.2f}" for k, v in sorted(r.epsilon.items()))
                dropped = f"  (dropped: {', '.join(r.dropped)})" if r.dropped else ""
                if r.flagged:
                    dropped += f"  flagged: {', '.join(r.flagged)}"
                if r.excluded:
                    dropped += f"  excluded: {', '.join(r.excluded)}"
                say(f"{r.round:>5}  {len(r.sites):>5}  {_fmt(r.loss):>7}  {_fmt(r.accuracy):>6}  {eps}{dropped}")
                bar.update(1)
            bar.close()
            run.wait()
            say(
                "  (* loss and accuracy: the room's DP release on the union of the sites' held-out sets, summed "
                "before anyone sees it, on the rounds of the evaluation schedule (eval_every; always the last))"
            )
            if run.status != "finished":
                say(f"The run {run.status}: {run.error.message if run.error else 'no reason given'}")
                for refusal in run.refusals:
                    say(f"  {refusal.site} refused ({refusal.reason}): {refusal.message}")
                return 1
            params = run.params
            privacy = run.privacy
            final = run.final_metrics  # the DP-released held-out accuracy and its noise scale
        finally:
            room.close()
        accuracy = evaluate(spec, params, test).accuracy
        say("Training the non-private central baseline on the union of the sites' training data ...")
        baseline = _central_baseline_accuracy(er, spec, test, recipe["baseline_epochs"], seed)
        elapsed = time.perf_counter() - started
        say("")
        bound = f"epsilon <= {target_epsilon:g}" if target_epsilon is not None else "fixed noise"
        say(f"Global model test accuracy: {accuracy:.4f}  (DP federated, {bound} per site)")
        say(f"Non-private central baseline: {baseline:.4f}")
        say(
            f"  Both measured on a central test split of {len(test)} examples that no site ever held "
            "(the demo generated the partitions, so only it has this split)."
        )
        if final is not None:  # what an analyst of a real room sees: the sites' own held-out sets, DP
            say(f"Room's released {final.text()}; ± is one standard deviation of its DP noise")
        say("Privacy spent per site (this run):")
        for name, p in privacy.sites.items():
            site_level = "" if p.site_epsilon is None else f"; site-level epsilon {p.site_epsilon:.3f}"
            say(
                f"  {name}: epsilon {p.epsilon:.3f} at delta {p.delta:g} (cap {p.cap:g}, {p.remaining:.3f} left)"
                f"{site_level}"
            )
        if temporary:
            say(
                f"State: {er.state_dir}, a temporary directory, removed now; give --state DIR to keep it (every "
                "audit log and ledger) and check it with: fedjax-room audit verify DIR"
            )
        else:
            say(f"State: {er.state_dir}")
            say(f"  coordinator audit log: {er.coordinator_dir / 'audit.jsonl'}")
            for name in er.site_names:
                say(f"  {name} audit log and ledger: {er.site_dir(name) / 'state'}/audit.jsonl, ledger.json")
            say(f"Verify every log in it with: fedjax-room audit verify {er.state_dir}")
        say(f"Done in {elapsed:.0f}s.")
        if as_json:
            summary = {
                "accuracy": accuracy,
                "baseline_accuracy": baseline,
                "released_accuracy": None if final is None else final.accuracy,
                "released_accuracy_std": None if final is None else final.accuracy_std,
                "rounds": run.rounds_done,
                "target_epsilon": target_epsilon,
                "dataset": dataset,
                "state_dir": None if temporary else str(er.state_dir),
                "secure_aggregation": config.secure_aggregation,
                "site_noise_multiplier": config.site_noise_multiplier,
                "protections": protections(config),
                "aggregator": aggregator,
                "attack": attack,
                "malicious": sorted(attacks),
                "defences": run.defences,
                "seconds": round(elapsed, 1),
                "sites": [
                    {"name": n, "epsilon": p.epsilon, "delta": p.delta, "cap": p.cap, "site_epsilon": p.site_epsilon}
                    for n, p in privacy.sites.items()
                ],
                "history": [dataclasses.asdict(r) for r in run.history],
            }
            print(json.dumps(summary), file=out, flush=True)
    return 0
