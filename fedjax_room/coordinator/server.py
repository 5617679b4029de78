"""The coordinator process: store + audit log + state machine + websocket server.

``fedjax-room coordinator --state DIR`` calls :func:`run_coordinator`. It opens (or creates) the
room in ``DIR`` (:class:`~fedjax_room.coordinator.store.Store`), its room key
``DIR/coordinator.key`` (created on first start; the public half is exported to
``DIR/coordinator.key.pub`` for the operator to hand to the sites and analysts, who pin it) and audit
log ``DIR/audit.jsonl``, starts listening (plain ``ws://`` on loopback only, unless ``insecure``), writes the URL it
listens on to ``DIR/coordinator.url`` (so ``--port 0`` works), resumes any unfinished run, and
serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

from fedjax_room.coordinator.store import Store
from fedjax_room.errors import ConfigError
from fedjax_room.files import atomic_write
from fedjax_room.protocol.codec import MAX_FRAME_BYTES
from fedjax_room.protocol.coordinator import CoordinatorMachine
from fedjax_room.transport.server import MachineServer, server_ssl_context
from fedjax_room.transport.signals import install_stop_signals

__all__ = ["LogAudit", "coordinator_key", "run_coordinator", "serve_coordinator"]


log = logging.getLogger("fedjax_room.coordinator")


def coordinator_key(state_dir: Path) -> Any:
    """The coordinator's Ed25519 room key in ``state_dir`` (created on first use, ``coordinator.key.pub`` kept)."""
    from fedjax_room.identity import generate_key, load_private_key, save_private_key, save_public_key

    state_dir = Path(state_dir)
    path = state_dir / "coordinator.key"
    if not path.exists():
        from fedjax_room.files import private_dir

        private_dir(state_dir)
        save_private_key(generate_key(), path)
    key = load_private_key(path)
    pub = path.with_name(path.name + ".pub")
    if not pub.exists():
        save_public_key(key.public_key(), pub)
    return key


class LogAudit:
    """Adapter from an :class:`~fedjax_room.audit.AuditLog` to the machine's audit sink."""

    def __init__(self, log_: Any) -> None:
        self._log = log_

    def append(self, kind: str, **fields: Any) -> Any:
        return self._log.append(kind, **fields)

    def tail(self, last: int) -> list[dict[str, Any]]:
        records = self._log.records()
        return records[-last:] if last > 0 else []


async def serve_coordinator(
    state_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    max_frame: int = MAX_FRAME_BYTES,
    stop: asyncio.Event | None = None,
    insecure: bool = False,
) -> None:
    """Serve the room in ``state_dir`` until ``stop`` is set (or SIGTERM/SIGINT)."""
    from fedjax_room.audit import AuditLog

    state = Path(state_dir)
    store = Store.open(state)
    key = coordinator_key(state)
    audit_log = AuditLog.open(state, key, writer="coordinator")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("give both --tls-cert and --tls-key (or neither)")
    ssl_ctx = server_ssl_context(tls_cert, tls_key) if tls_cert and tls_key is not None else None
    machine = CoordinatorMachine(
        store, audit=LogAudit(audit_log), max_frame=max_frame, room_key=key, background=True
    )  # background: a new run's initial model and checkpoint are built off the event loop
    server = MachineServer(machine, host=host, port=port, ssl_context=ssl_ctx, max_frame=max_frame, insecure=insecure)
    url = await server.start()
    threading.Thread(target=_warm_up, name="warm-up", daemon=True).start()
    # the stop signals first: whoever sees coordinator.url may SIGTERM at once, and must get a clean stop
    stop = stop or asyncio.Event()
    install_stop_signals(stop)
    atomic_write(state / "coordinator.url", url.encode())
    log.info("room %s listening on %s (state in %s)", store.room_id, url, state)
    print(f"fedjax-room coordinator: room {store.room_id} listening on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()
        with contextlib.suppress(Exception):
            audit_log.close()
        store.close()
        with contextlib.suppress(OSError):
            (state / "coordinator.url").unlink()


def _warm_up() -> None:
    """Import JAX/Flax in the background so the first run's initial model is quick to make."""
    try:
        import jax.numpy as jnp

        import fedjax_room.models.build  # noqa: F401

        jnp.zeros(1).block_until_ready()
    except Exception:  # pragma: no cover - only an optimisation
        log.debug("warm-up failed", exc_info=True)


def run_coordinator(state_dir: str | Path, **kwargs: Any) -> int:
    """Blocking entry point for the CLI; returns an exit code."""
    asyncio.run(serve_coordinator(state_dir, **kwargs))
    return 0
