"""``fedjax-room manifest create | sign | verify``: the room manifest sites pin (:mod:`fedjax_room.room_manifest`).

* ``manifest create --out room-manifest.json --coordinator-key coordinator.key.pub --site site-a=site-a.key.pub
  ...`` (or ``--state DIR``: every site enrolled in that coordinator's room, and its ``coordinator.key.pub``)
  writes an unsigned manifest.
* ``manifest sign room-manifest.json --key site-a.key [--name site-a]``: a data owner adds its signature
  (only a listed site, with the key the manifest lists for it).
* ``manifest verify room-manifest.json [--require-all] [--site NAME --public-key F]`` checks every signature
  (``--require-all``: every site must have signed) and, given ``--site``, that it lists that key; exits 2
  saying what is wrong otherwise.

Hand the signed manifest to every site (``fedjax-room site --manifest FILE``) and analyst out of band.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedjax_room.errors import ConfigError

__all__ = ["register", "run_create", "run_sign", "run_verify"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``manifest create|sign|verify``."""
    parser = subparsers.add_parser(
        "manifest",
        help="create, sign and verify the room manifest (every site's key and the coordinator's)",
        description="The room manifest lists every site's public key and the coordinator's room key. Sites pin it "
        "(`site --manifest FILE`): they authenticate the coordinator with it and join secure aggregation only "
        "with the peers it lists.",
    )
    sub = parser.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)

    p = sub.add_parser("create", help="write a new (unsigned) manifest", description="Write a new manifest.")
    p.add_argument("--out", required=True, type=Path, help="manifest file to write")
    p.add_argument("--coordinator-key", type=Path, help="the coordinator's public key (STATE/coordinator.key.pub)")
    p.add_argument("--site", action="append", default=[], metavar="NAME=PUBKEY", help="a site and its key file")
    p.add_argument("--state", type=Path, help="take the enrolled sites and the room key from this coordinator state")
    p.add_argument("--room-id", default="", help="the room id the coordinator must state (optional)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=run_create)

    p = sub.add_parser("sign", help="add a data owner's signature", description="Sign the manifest as one site.")
    p.add_argument("manifest", type=Path)
    p.add_argument("--key", required=True, type=Path, help="the site's private key")
    p.add_argument("--name", help="the site's name in the manifest (default: the key file's name)")
    p.set_defaults(func=run_sign)

    p = sub.add_parser("verify", help="check a manifest's signatures", description="Verify a manifest.")
    p.add_argument("manifest", type=Path)
    p.add_argument("--require-all", action="store_true", help="every listed site must have signed")
    p.add_argument("--site", help="check that the manifest lists this site ...")
    p.add_argument("--public-key", type=Path, help="... with this public key")
    p.set_defaults(func=run_verify)


def _site_arg(text: str) -> tuple[str, bytes]:
    from fedjax_room.identity import load_public_key, public_key_bytes

    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--site {text!r}: write NAME=PUBLIC_KEY_FILE")
    return name, public_key_bytes(load_public_key(path))


def run_create(args: argparse.Namespace) -> int:
    """Write a new manifest from key files or a coordinator's state directory."""
    from fedjax_room.identity import load_public_key, public_key_bytes
    from fedjax_room.room_manifest import create_manifest, save_manifest

    if args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} already exists; pass --force to overwrite it")
    sites = dict(_site_arg(s) for s in args.site)
    coordinator = args.coordinator_key
    room_id = args.room_id
    if args.state is not None:
        from fedjax_room.coordinator.server import coordinator_key
        from fedjax_room.coordinator.store import Store

        coordinator_key(args.state)  # the room key exists from now on (the coordinator uses it when it starts)
        coordinator = coordinator or args.state / "coordinator.key.pub"
        store = Store.open(args.state)
        try:
            for ident in store.identities():
                if ident.role == "site" and not ident.revoked:
                    sites.setdefault(ident.name, bytes(ident.public_key))
            room_id = room_id or store.room_id
        finally:
            store.close()
    if coordinator is None:
        raise ConfigError("give --coordinator-key FILE (the coordinator's coordinator.key.pub) or --state DIR")
    if not sites:
        raise ConfigError("a manifest needs at least one site: give --site NAME=KEY.pub or --state DIR")
    manifest = create_manifest(sites, public_key_bytes(load_public_key(coordinator)), room_id=room_id)
    save_manifest(manifest, args.out)
    print(
        f"wrote {args.out}: {len(sites)} sites ({', '.join(sorted(sites))}), unsigned; each data owner now runs "
        f"`fedjax-room manifest sign {args.out} --key SITE.key`"
    )
    return 0


def run_sign(args: argparse.Namespace) -> int:
    """Add one site's signature to the manifest."""
    from fedjax_room.identity import load_private_key
    from fedjax_room.room_manifest import load_manifest, save_manifest, sign_manifest

    manifest = load_manifest(args.manifest)
    name = args.name or args.key.name.split(".")[0]
    signed = sign_manifest(manifest, name, load_private_key(args.key))
    save_manifest(signed, args.manifest)
    print(f"{name} signed {args.manifest} ({len(signed.signatures)} of {len(signed.sites)} sites have signed)")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Check the manifest; exit 2 with the reason when it does not hold."""
    from fedjax_room.identity import fingerprint, load_public_key, public_key_bytes, public_key_from_bytes
    from fedjax_room.room_manifest import load_manifest

    manifest = load_manifest(args.manifest)
    signers = manifest.verify(require="all" if args.require_all else ())
    if args.site is not None:
        listed = manifest.sites.get(args.site)
        if listed is None:
            raise ConfigError(f"{args.manifest} does not list site {args.site!r}")
        if args.public_key is not None and listed != public_key_bytes(load_public_key(args.public_key)):
            raise ConfigError(f"{args.manifest} lists another key for {args.site!r} than {args.public_key}")
    coordinator = fingerprint(public_key_from_bytes(manifest.coordinator))
    print(
        f"{args.manifest}: OK; {len(manifest.sites)} sites, coordinator {coordinator[:16]}, signed by "
        f"{', '.join(signers) if signers else 'nobody'}"
    )
    return 0
