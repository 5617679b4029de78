"""The site process: load data and policy, open the ledger and audit log, serve the coordinator.

``fedjax-room site --coordinator URL --key site.key --data PATH --policy policy.toml`` calls
:func:`run_site`. The agent reconnects with backoff when the connection drops (the coordinator may
restart), gives up with a clear message if its identity is refused, and runs every job on one
worker thread so the websocket keeps answering pings while it trains.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from fedjax_room.errors import AuthError, VersionError
from fedjax_room.protocol.actions import Close, Send, Work
from fedjax_room.protocol.site import SiteMachine
from fedjax_room.transport.client import Backoff, open_connection
from fedjax_room.transport.signals import install_stop_signals

__all__ = ["add_site_arguments", "build_agent", "run_site", "serve_site", "site_kwargs"]

log = logging.getLogger("fedjax_room.site")


def build_agent(
    *,
    key: Path,
    data: Path,
    policy: Path,
    state_dir: Path | None = None,
    name: str | None = None,
    heldout: Path | None = None,
    heldout_fraction: float = 0.2,
    train_delay: float = 0.0,
    schema: Path | None = None,
    agent_factory: Callable[..., Any] | None = None,
) -> Any:
    """Load everything a site needs and return its :class:`~fedjax_room.site.agent.SiteAgent`.

    The data's schema must be declared — ``schema`` (a JSON file) or one stored with the data file — since its
    class list leaves the site; it is never read off the data (a :class:`~fedjax_room.errors.SchemaError` says how
    to declare it). ``heldout`` is read with the same schema. Without ``heldout``, each record is held out or not by
    a hash of its own content keyed with the site's secret (:meth:`~fedjax_room.data.Dataset.split_by_key`).
    ``agent_factory`` (default :class:`~fedjax_room.site.agent.SiteAgent`) is called with the agent's arguments.
    """
    import hashlib
    import hmac

    from fedjax_room.audit import AuditLog
    from fedjax_room.data.loaders import load_dataset, load_schema
    from fedjax_room.identity import load_private_key
    from fedjax_room.site.agent import SiteAgent
    from fedjax_room.site.ledger import check_against_audit
    from fedjax_room.site.policy import Policy
    from fedjax_room.site.secret import load_secret

    name = name or Path(key).name.split(".")[0]
    signing_key = load_private_key(key)
    rules = Policy.load(policy)
    declared = load_schema(schema) if schema is not None else None
    dataset = load_dataset(data, declared, infer=False)
    held_out = load_dataset(heldout, dataset.schema, infer=False) if heldout is not None else None
    state = Path(state_dir) if state_dir else Path(key).parent / f"{name}-state"
    audit = AuditLog.open(state, signing_key, writer=name)
    try:
        if held_out is not None:
            train, held = dataset, held_out
        else:  # each record's side depends on that record alone, keyed with the site's secret
            split_key = hmac.new(load_secret(state), b"fedjax-room heldout split v1", hashlib.sha256).digest()
            train, held = dataset.split_by_key(heldout_fraction, split_key)
        agent = (agent_factory or SiteAgent)(  # agent_factory: e.g. a simulated attacker (fedjax_room.sim.attacker)
            name=name, train=train, heldout=held, policy=rules, state_dir=state, audit=audit, train_delay=train_delay
        )
        check_against_audit(agent.ledger, audit.records())  # a deleted or rolled-back ledger: refuse to start
    except BaseException:
        audit.close()
        raise
    return agent


def add_site_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of a serving site process (``fedjax-room site``, ``python -m fedjax_room.sim.attacker``)."""
    p.add_argument("--coordinator", help="the room's URL (ws://HOST:PORT or wss://...)")
    p.add_argument("--key", type=Path, help="this site's private key")
    p.add_argument("--data", type=Path, help="the site's training data (.npz/.csv/.parquet)")
    p.add_argument("--heldout", type=Path, help="held-out data for evaluation (default: 20%% of --data)")
    p.add_argument(
        "--schema",
        type=Path,
        help="declared schema JSON (features, feature_shape, label, classes); needed unless stored with --data",
    )
    p.add_argument("--policy", type=Path, help="policy TOML (caps, allowed models, ...)")
    p.add_argument("--state", type=Path, help="state directory (ledger, releases, audit; default KEYDIR/NAME-state)")
    p.add_argument("--name", help="enrolled name (default: the key file's name without suffix)")
    p.add_argument("--tls-ca", type=Path, help="CA certificate to trust for wss://")
    p.add_argument(
        "--manifest",
        type=Path,
        help="the room manifest (sites' and coordinator's keys, from the data owners; default: "
        "KEYDIR/room-manifest.json); needed for secure aggregation, and pins the coordinator's key",
    )
    p.add_argument(
        "--coordinator-key",
        type=Path,
        help="the coordinator's public key file to pin (default: the manifest's, or KEYDIR/coordinator.key.pub)",
    )
    p.add_argument("--insecure", action="store_true", help="allow plain ws:// to a non-loopback coordinator")
    p.add_argument("--log-level", default="info", help="log level on stderr: debug, info, warning or error")
    p.add_argument("--train-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: a straggler


def site_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`run_site`'s keyword arguments from :func:`add_site_arguments`' namespace; a
    :class:`~fedjax_room.errors.ConfigError` names the required ones missing."""
    from fedjax_room.errors import ConfigError

    missing = [f"--{n}" for n in ("coordinator", "key", "data", "policy") if getattr(args, n) is None]
    if missing:
        raise ConfigError(f"a site agent needs {', '.join(missing)} to run")
    return {
        "coordinator": args.coordinator,
        "key": args.key,
        "cafile": args.tls_ca,
        "data": args.data,
        "heldout": args.heldout,
        "schema": args.schema,
        "policy": args.policy,
        "state_dir": args.state,
        "name": args.name,
        "train_delay": args.train_delay,
        "manifest": args.manifest,
        "coordinator_key": args.coordinator_key,
        "insecure": args.insecure,
    }


async def serve_site(
    url: str,
    key: Any,
    agent: Any,
    *,
    cafile: str | Path | None = None,
    stop: asyncio.Event | None = None,
    backoff: Backoff | None = None,
    coordinator_key: Any = None,
    manifest: Any = None,
    insecure: bool = False,
) -> None:
    """Keep the agent connected to the coordinator at ``url`` until ``stop`` is set.

    ``coordinator_key`` pins the coordinator's room key (default: the ``manifest``'s); ``manifest`` (a
    :class:`~fedjax_room.room_manifest.Manifest`) is the only source of peers' keys for secure aggregation.
    Raises the coordinator's :class:`~fedjax_room.errors.AuthError` / ``VersionError``, or an ``AuthError``
    when the coordinator cannot prove the pinned key (retrying cannot fix those); any network failure is
    retried with backoff.
    """
    from fedjax_room.secagg.sessions import SessionBindings

    stop = stop or asyncio.Event()
    backoff = backoff or Backoff()
    pin = coordinator_key if coordinator_key is not None else manifest
    machine = SiteMachine(
        agent.status,
        identity_key=key,
        audit=agent.audit.append if agent.audit is not None else None,
        manifest=manifest,
        name=agent.name,
        min_sites=agent.policy.min_sites,
        sessions=SessionBindings(agent.state_dir),
    )
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"site-{agent.name}")
    loop = asyncio.get_running_loop()
    current: dict[str, Any] = {"ws": None}
    lock = asyncio.Lock()
    jobs: set[asyncio.Future[Any]] = set()

    def notify(msg: Any) -> None:  # a job (on the worker thread) tells the coordinator something, e.g. run_waiting
        from fedjax_room.protocol import messages as m

        data = m.encode(msg)
        loop.call_soon_threadsafe(lambda: loop.create_task(perform([Send(0, data)])))

    agent.notify = notify
    agent.stopping.clear()

    async def perform(actions: list[Any]) -> None:
        for action in actions:
            ws = current["ws"]
            if isinstance(action, Send) and ws is not None:
                async with lock:
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(action.data)
            elif isinstance(action, Close) and ws is not None:
                await ws.close(action.code, action.reason)
            elif isinstance(action, Work):
                fut = loop.run_in_executor(executor, agent.handle, action.kind, action.message)
                jobs.add(fut)
                fut.add_done_callback(functools.partial(on_done, action.key))

    def on_done(key: str, fut: asyncio.Future[Any]) -> None:
        jobs.discard(fut)
        result = fut.result() if not fut.cancelled() and fut.exception() is None else None
        if fut.exception() is not None:
            log.error("job %s failed: %s", key, fut.exception())
        loop.create_task(perform(machine.work_done(key, result)))

    # Import JAX and start its backend while connecting: the first offer then answers sooner.
    loop.run_in_executor(executor, _warm_up)
    try:
        while not stop.is_set():
            try:
                ws, welcome = await open_connection(
                    url, key, role="site", name=agent.name, cafile=cafile, coordinator_key=pin, insecure=insecure
                )
            except (AuthError, VersionError):
                raise
            except OSError as exc:
                delay = backoff.next()
                log.info("cannot reach %s (%s); retrying in %.1fs", url, exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            backoff.reset()
            log.info("%s connected to room %s at %s", agent.name, welcome.room_id, url)
            current["ws"] = ws
            await perform(machine.welcomed())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                while True:
                    recv = asyncio.ensure_future(ws.recv())
                    done, _ = await asyncio.wait({recv, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if stopper in done:
                        recv.cancel()
                        await ws.close()
                        break
                    await perform(machine.receive(recv.result()))
            except ConnectionClosed:
                log.info("%s lost its connection to %s", agent.name, url)
            finally:
                stopper.cancel()
                current["ws"] = None
                machine.disconnected()
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff.next())
    finally:
        agent.stopping.set()  # a job waiting for the data owner's approval gives up
        executor.shutdown(wait=False, cancel_futures=True)


def _warm_up() -> None:
    try:
        import jax.numpy as jnp

        import fedjax_room.local  # noqa: F401

        jnp.zeros(1).block_until_ready()
    except Exception:  # pragma: no cover - warming up is only an optimisation
        log.debug("warm-up failed", exc_info=True)


def run_site(
    *,
    coordinator: str,
    key: Path,
    cafile: Path | None = None,
    manifest: Path | None = None,
    coordinator_key: Path | None = None,
    insecure: bool = False,
    **kwargs: Any,
) -> int:
    """Blocking entry point for the CLI: serve until SIGTERM/SIGINT; returns an exit code.

    ``manifest`` defaults to ``room-manifest.json`` next to the key file; ``coordinator_key`` to the
    manifest's coordinator key, else ``coordinator.key.pub`` next to the key file (see
    :func:`~fedjax_room.transport.client.default_pin_path`). Without any pin the site refuses to start.
    """
    from fedjax_room.errors import ConfigError
    from fedjax_room.identity import load_private_key, public_key_bytes
    from fedjax_room.room_manifest import load_manifest
    from fedjax_room.transport.client import default_pin_path, load_coordinator_pin

    default_manifest = Path(key).parent / "room-manifest.json"
    if manifest is None and default_manifest.exists():
        manifest = default_manifest
    room = load_manifest(manifest) if manifest is not None else None
    pin_source: Any = coordinator_key if coordinator_key is not None else room
    if pin_source is None:
        pin_source = default_pin_path(key)
    if pin_source is None:
        raise ConfigError(
            "the site cannot authenticate the coordinator: give --manifest FILE (the room manifest) or "
            "--coordinator-key FILE (the operator's coordinator.key.pub)"
        )
    pin = load_coordinator_pin(pin_source)
    if room is not None and pin.key != room.coordinator:
        raise ConfigError("--coordinator-key is not the coordinator key of the room manifest; which one is right?")
    agent = build_agent(key=key, **kwargs)
    signing_key = load_private_key(key)
    if room is not None and room.sites.get(agent.name) != public_key_bytes(signing_key):
        raise ConfigError(f"the room manifest does not list this key for site {agent.name!r}; fix the manifest")

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        print(f"fedjax-room site {agent.name}: serving {coordinator} (state in {agent.state_dir})", flush=True)
        await serve_site(
            coordinator,
            signing_key,
            agent,
            cafile=cafile,
            stop=stop,
            coordinator_key=pin,
            manifest=room,
            insecure=insecure,
        )

    asyncio.run(main())
    return 0
