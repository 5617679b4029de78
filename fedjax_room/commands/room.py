"""``fedjax-room keygen | enroll | revoke | coordinator | site | demo``: running a room.

* ``keygen --out site.key`` writes an Ed25519 key (and ``site.key.pub``).
* ``enroll --state DIR --name NAME --role site|analyst --public-key F`` enrolls an identity in the
  coordinator's database (offline; the coordinator audits it when it next starts or ticks).
* ``revoke --state DIR --name NAME`` revokes an identity: refused from now on, its live connection closed by
  the running coordinator at its next tick (about a second), logged as ``identity_revoked``.
* ``coordinator --state DIR [--host 127.0.0.1] [--port 8765] [--tls-cert F --tls-key F]`` serves the room.
* ``site --coordinator URL --key site.key --data PATH --policy policy.toml [--state DIR]`` runs a data
  owner's agent. ``site pending --state DIR``, ``site approve HASH --state DIR`` and ``site reject HASH
  --reason TEXT --state DIR`` decide on model specs waiting for approval (:mod:`fedjax_room.site.approval`).
* ``demo [--sites 3] [--dataset digits] [--non-iid ALPHA] [--state DIR] [--json]
  [--attack boost|sign_flip|label_flip|gaussian --malicious K] [RUN OPTIONS]`` runs an embedded room end to
  end (see :mod:`fedjax_room.sim.demo`); the run options are every RunConfig field as a flag
  (``--rounds``, ``--target-epsilon``, ``--aggregator``, ``--exclude-below``, ...), generated from RunConfig.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from pathlib import Path
from typing import Any

from fedjax_room.data.builtin import BUILTIN_DATASETS
from fedjax_room.errors import ConfigError
from fedjax_room.protocol.options import add_run_options, given_options

__all__ = [
    "register",
    "run_coordinator_cmd",
    "run_demo",
    "run_enroll",
    "run_inbox",
    "run_keygen",
    "run_revoke",
    "run_site_cmd",
]


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``keygen``, ``enroll``, ``coordinator``, ``site`` and ``demo``."""
    p = subparsers.add_parser("keygen", help="write a new Ed25519 identity key", description="Write an Ed25519 key.")
    p.add_argument("--out", required=True, type=Path, help="private key file to write (also writes OUT.pub)")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")
    p.set_defaults(func=run_keygen)

    p = subparsers.add_parser(
        "enroll", help="enroll a site or analyst key in a room", description="Enroll an identity (offline)."
    )
    p.add_argument("--state", required=True, type=Path, help="the coordinator's state directory")
    p.add_argument("--name", required=True, help="the identity's name (letters, digits, - _ .)")
    p.add_argument("--role", required=True, choices=("site", "analyst"), help="what the identity may do")
    p.add_argument("--public-key", required=True, type=Path, help="its public key file (KEY.pub; a private key works)")
    p.set_defaults(func=run_enroll)

    p = subparsers.add_parser(
        "revoke",
        help="revoke an enrolled key (takes effect at once)",
        description="Revoke an identity: new connections with its key are refused, a live one is closed by the "
        "running coordinator within a second, and the coordinator logs identity_revoked.",
    )
    p.add_argument("--state", required=True, type=Path, help="the coordinator's state directory")
    p.add_argument("--name", required=True, help="the enrolled name to revoke")
    p.set_defaults(func=run_revoke)

    p = subparsers.add_parser("coordinator", help="run the room service", description="Run the coordinator.")
    p.add_argument("--state", required=True, type=Path, help="state directory (SQLite, checkpoints, audit log)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; needs TLS)")
    p.add_argument("--port", type=int, default=8765, help="port (0: pick a free one; see DIR/coordinator.url)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain for wss://")
    p.add_argument("--tls-key", type=Path, help="PEM private key of the certificate")
    p.add_argument(
        "--insecure", action="store_true", help="allow plain ws:// on a non-loopback --host (frames unprotected)"
    )
    p.add_argument("--log-level", default="info", help="log level on stderr: debug, info, warning or error")
    p.set_defaults(func=run_coordinator_cmd)

    p = subparsers.add_parser(
        "site",
        help="run a data owner's agent, or decide on models waiting for approval",
        description="Run a site agent (`site --coordinator URL --key K --data D --policy P`), or, with "
        'approval = "manual" in its policy, list and decide on model specs waiting in its inbox: '
        "`site pending --state DIR`, `site approve HASH --state DIR`, `site reject HASH --reason TEXT --state DIR`.",
    )
    p.add_argument("action", nargs="?", choices=("pending", "approve", "reject"), help="inbox command (optional)")
    p.add_argument("spec_hash", nargs="?", metavar="HASH", help="spec hash (or a unique prefix) to approve/reject")
    p.add_argument("--reason", default="", help="why a model is rejected (the analyst sees it)")
    from fedjax_room.site.runner import add_site_arguments

    add_site_arguments(p)  # the serving arguments, shared with python -m fedjax_room.sim.attacker
    p.set_defaults(func=run_site_cmd)

    p = subparsers.add_parser(
        "demo",
        help="run an embedded room end to end (coordinator + sites on loopback)",
        description="Start a coordinator and N sites as processes on 127.0.0.1, train a DP federated model "
        "from the analyst client, and compare it with a non-private central baseline.",
    )
    p.add_argument("--sites", type=int, default=3, help="number of sites, each its own process (default 3)")
    p.add_argument("--dataset", default="digits", choices=BUILTIN_DATASETS, help="built-in dataset (default digits)")
    p.add_argument(
        "--non-iid", type=float, default=None, metavar="ALPHA", help="Dirichlet(alpha) label skew (default: IID)"
    )
    p.add_argument(
        "--state",
        type=Path,
        default=None,
        metavar="DIR",
        help="state directory, kept (default: a temporary one, removed when the demo ends)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument(
        "--attack",
        choices=("boost", "sign_flip", "label_flip", "gaussian"),
        default=None,
        help="make --malicious sites simulated attackers (a demo feature: watch fedavg break and median hold)",
    )
    p.add_argument(
        "--malicious", type=int, default=None, metavar="K", help="how many sites attack (needs --attack; default 1)"
    )
    add_run_options(p, notes=_demo_notes())  # every RunConfig option, generated from its declaration
    p.set_defaults(func=run_demo)


def run_keygen(args: argparse.Namespace) -> int:
    """Write a fresh Ed25519 key."""
    from fedjax_room.identity import fingerprint, generate_key, save_private_key

    if args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} already exists; pass --force to overwrite it (the old identity is lost)")
    key = generate_key()
    save_private_key(key, args.out)
    print(f"wrote {args.out} and {args.out}.pub (fingerprint {fingerprint(key)})")
    return 0


def run_enroll(args: argparse.Namespace) -> int:
    """Enroll a public key in the coordinator's store."""
    from fedjax_room.coordinator.store import Store
    from fedjax_room.identity import fingerprint, load_public_key, public_key_bytes

    key = load_public_key(args.public_key)
    store = Store.open(args.state)
    try:
        ident, created = store.enroll(args.name, args.role, public_key_bytes(key), fingerprint(key))
    finally:
        store.close()
    verb = "enrolled" if created else "already enrolled:"
    print(f"{verb} {ident.name} as {ident.role} (fingerprint {ident.fingerprint}) in room {args.state}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """Mark an identity revoked in the coordinator's store (the running coordinator acts on it at its next tick)."""
    from fedjax_room.coordinator.store import Store

    store = Store.open(args.state)
    try:
        store.revoke(args.name)
    finally:
        store.close()
    print(f"revoked {args.name} in room {args.state}: its key is refused from now on")
    return 0


def run_inbox(args: argparse.Namespace) -> int:
    """``site pending | approve | reject``: the data owner's side of the approval inbox."""
    from fedjax_room.site.approval import Inbox

    if args.state is None:
        raise ConfigError(f"`fedjax-room site {args.action}` needs --state DIR (the site's state directory)")
    inbox = Inbox(args.state)
    if args.action == "pending":
        entries = inbox.pending()
        if not entries:
            print("nothing waits for approval")
        for e in entries:
            runs = ", ".join(e["runs"])
            print(f"{e['spec_hash']}  {e.get('family', '')}  {e.get('params', 0)} parameters  runs {runs}")
        return 0
    if not args.spec_hash:
        raise ConfigError(f"`fedjax-room site {args.action} HASH --state DIR`: give the spec hash (see `site pending`)")
    record = inbox.decide(args.spec_hash, "approved" if args.action == "approve" else "rejected", args.reason)
    print(f"{record['decision']} {record['spec_hash']}; the running site agent picks it up within a second")
    return 0


def run_coordinator_cmd(args: argparse.Namespace) -> int:
    """Serve the room until interrupted."""
    from fedjax_room.coordinator.server import run_coordinator

    _logging(args.log_level)
    return _serve_then_exit(
        lambda: run_coordinator(
            args.state,
            host=args.host,
            port=args.port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            insecure=args.insecure,
        )
    )


def run_site_cmd(args: argparse.Namespace) -> int:
    """Run a site agent until interrupted (or, with an action, work on its approval inbox)."""
    from fedjax_room.site.runner import run_site, site_kwargs

    if args.action is not None:
        return run_inbox(args)
    kwargs = site_kwargs(args)  # a ConfigError naming the missing --coordinator/--key/--data/--policy
    _logging(args.log_level)
    return _serve_then_exit(lambda: run_site(**kwargs))


def _serve_then_exit(serve: Any) -> int:
    """Run a long-lived service, then leave the process at once (see :func:`fedjax_room.sim.launch.serve_then_exit`)."""
    from fedjax_room.sim.launch import serve_then_exit

    serve_then_exit(serve)


def _demo_notes() -> dict[str, str]:
    """The run options whose default the demo picks itself (per dataset, or secure aggregation when it can)."""
    from fedjax_room.protocol.config import RunConfig
    from fedjax_room.sim.demo import DEMO_RECIPES

    defaults = RunConfig()
    notes: dict[str, str] = {}
    for name in sorted({n for r in DEMO_RECIPES.values() for n in r["train"]}):
        picked = ", ".join(f"{d} {r['train'][name]}" for d, r in DEMO_RECIPES.items() if name in r["train"])
        notes[name] = f"default: {getattr(defaults, name)}, or the dataset's demo recipe ({picked})"
    notes["secure_aggregation"] = "default: on, unless a robust aggregator, --exclude-below, --attack or --sites 1"
    return notes


def run_demo(args: argparse.Namespace) -> int:
    """The embedded end-to-end demo: the run options given on the command line go to ``room.train``."""
    from fedjax_room.sim.demo import run_demo as demo

    if args.malicious is not None and args.attack is None:
        raise ConfigError("--malicious K needs --attack NAME (boost, sign_flip, label_flip or gaussian)")
    given = given_options(args)
    if given.get("noise_multiplier") is not None and "target_epsilon" not in given:
        given["target_epsilon"] = None  # not given: the default target gives way to the fixed noise
    accepted = inspect.signature(demo).parameters  # those the demo also reads itself; the rest pass through
    named = {name: given.pop(name) for name in list(given) if name in accepted}
    return demo(
        sites=args.sites,
        dataset=args.dataset,
        non_iid=args.non_iid,
        state_dir=args.state,
        as_json=args.json,
        attack=args.attack,
        malicious=1 if args.malicious is None else args.malicious,
        options=given,
        **named,
    )
