"""Starting room processes on this machine: a coordinator and site agents, each ``python -m fedjax_room``.

Used by the embedded room (:mod:`fedjax_room.sim.demo`) and by the integration tests. Every
process writes its log to ``<state>/logs/<name>.log``; :func:`stop_process` sends SIGTERM and, if
the process has not exited within a grace period, SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from fedjax_room.errors import FedRoomError, StateError

__all__ = [
    "serve_then_exit",
    "PARENT_PID_ENV",
    "spawn",
    "spawn_coordinator",
    "spawn_site",
    "stop_process",
    "wait_for_parent",
    "wait_for_url",
]

#: Set by :func:`spawn`; a room process started with it stops itself when that parent process dies.
PARENT_PID_ENV = "FEDJAX_ROOM_PARENT_PID"


def spawn(
    args: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None, module: str = "fedjax_room"
) -> subprocess.Popen[bytes]:
    """Start ``python -m MODULE ARGS`` (default ``fedjax_room``) with stdout+stderr appended to ``log_path``."""
    from fedjax_room.files import open_private, private_dir

    private_dir(log_path.parent)
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    full_env[PARENT_PID_ENV] = str(os.getpid())
    # the children import this very copy of fedjax_room, wherever they start
    package_root = str(Path(__file__).resolve().parents[2])
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, full_env.get("PYTHONPATH", "")) if p)
    # Small processes on a shared machine: one intra-op thread each keeps them from fighting.
    full_env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    # 0600 logs, and everything the room process creates is its owner's only (umask 077)
    with os.fdopen(open_private(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
            umask=0o077,
        )


def wait_for_parent(interval: float = 1.0) -> None:
    """If started by :func:`spawn`, SIGTERM this process once the parent that spawned it is gone.

    A kernel or test runner killed with SIGKILL cannot stop its room; its children notice that they
    were re-parented and shut down cleanly instead of lingering. (``PR_SET_PDEATHSIG`` is not used: it
    fires when the spawning *thread* exits, and rooms are often started from short-lived threads.)
    """
    raw = os.environ.get(PARENT_PID_ENV)
    if not raw or not raw.isdigit():
        return
    parent = int(raw)
    if os.getppid() != parent:  # the parent is already gone
        os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="fedjax-room-parent-watch", daemon=True).start()


def wait_for_url(state_dir: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    """Wait until the coordinator in ``state_dir`` writes ``coordinator.url``; return it."""
    path = Path(state_dir) / "coordinator.url"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StateError(f"the coordinator exited with status {proc.returncode}; see {state_dir}/logs")
        if path.exists():
            text = path.read_text().strip()
            if text:
                return text
        time.sleep(0.05)
    raise StateError(f"the coordinator did not start listening within {timeout:g}s; see {state_dir}/logs")


def spawn_coordinator(
    state_dir: Path,
    *,
    port: int = 0,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    log_name: str = "coordinator",
    timeout: float = 60.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a coordinator on 127.0.0.1 and wait for its URL. Returns ``(process, url)``."""
    state_dir = Path(state_dir)
    with_stale = state_dir / "coordinator.url"
    if with_stale.exists():
        with_stale.unlink()  # left behind by a killed coordinator
    args = ["coordinator", "--state", str(state_dir), "--host", "127.0.0.1", "--port", str(port)]
    if tls_cert:
        args += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
    proc = spawn(args, state_dir / "logs" / f"{log_name}.log")
    try:
        return proc, wait_for_url(state_dir, proc, timeout)
    except BaseException:
        stop_process(proc)
        raise


def spawn_site(
    url: str,
    *,
    key: Path,
    data: Path,
    policy: Path,
    state_dir: Path,
    name: str,
    heldout: Path | None = None,
    log_dir: Path,
    tls_ca: Path | None = None,
    extra: Sequence[str] = (),
    attack: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a site agent (``fedjax-room site``), or with ``attack`` a simulated attacker playing it
    (``python -m fedjax_room.sim.attacker --attack NAME``, the same arguments otherwise)."""
    args = [
        "--coordinator",
        url,
        "--key",
        str(key),
        "--data",
        str(data),
        "--policy",
        str(policy),
        "--state",
        str(state_dir),
        "--name",
        name,
    ]
    if heldout:
        args += ["--heldout", str(heldout)]
    if tls_ca:
        args += ["--tls-ca", str(tls_ca)]
    if attack is not None:
        return spawn(["--attack", attack, *args, *extra], log_dir / f"{name}.log", module="fedjax_room.sim.attacker")
    return spawn(["site", *args, *extra], log_dir / f"{name}.log")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int | None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def serve_then_exit(serve: Callable[[], int | None], prog: str = "fedjax-room") -> NoReturn:
    """Run a long-lived service; once it has shut down cleanly (state closed), leave the process at once.

    A background JAX import or a training job cut short by SIGTERM must not keep the process alive:
    nothing is released before it is fully written (ledger and release files are atomic), so nothing is
    lost by not waiting for them. A process spawned by an embedded room also stops once its parent dies.
    A :class:`~fedjax_room.errors.FedRoomError` is printed as ``<prog>: error: ...`` and exits 2.
    """
    wait_for_parent()
    try:
        code = int(serve() or 0)
    except FedRoomError as exc:
        print(f"{prog}: error: {exc.message}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
