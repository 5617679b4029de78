"""The room manifest: who is in the room, by key, trusted independently of the coordinator.

A manifest is a small JSON file, distributed out of band (by e-mail, a repository, a USB stick) and
pinned by each site (``fedjax-room site --manifest FILE``)::

    {
      "format": "fedjax-room-manifest",
      "version": 1,
      "room_id": "",                                   # optional: the room id the coordinator must state
      "coordinator": "<hex raw Ed25519 public key>",   # the coordinator's room key (coordinator.key.pub)
      "sites": {"site-a": "<hex key>", "site-b": "<hex key>"},
      "signatures": {"site-a": "<hex Ed25519 signature>"}
    }

Each data owner may sign it (``fedjax-room manifest sign``) with its site key: a signature covers
:meth:`Manifest.signed_bytes` (a domain-separated canonical JSON of everything but the signatures), so a
manifest edited after signing no longer verifies. A site uses the manifest to

* authenticate the coordinator (its handshake proof must verify under ``coordinator``), and
* take part in a secure-aggregation round only when every roster entry is a manifest site with the
  manifest's key (the coordinator's copy of the keys is not trusted).

Pure functions and a frozen dataclass; no I/O except :func:`load_manifest` / :func:`save_manifest`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedjax_room.errors import BadSignatureError, ConfigError
from fedjax_room.identity import public_key_bytes, public_key_from_bytes, sign, verify
from fedjax_room.protocol.fields import is_id

__all__ = [
    "FORMAT",
    "MANIFEST_DOMAIN",
    "Manifest",
    "create_manifest",
    "load_manifest",
    "save_manifest",
    "sign_manifest",
]

#: The ``format`` field of every manifest.
FORMAT = "fedjax-room-manifest"
#: Prefix of the bytes a manifest signature covers.
MANIFEST_DOMAIN = b"fedjax-room manifest v1\n"
#: Largest manifest file read (a 64-site manifest is ~12 KB).
MAX_MANIFEST_BYTES = 1 << 20
_MAX_SITES = 1024


def _key(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise ConfigError(f"manifest: {what} must be a hex Ed25519 public key") from None
    else:
        raise ConfigError(f"manifest: {what} must be a hex string, got {type(value).__name__}")
    if len(raw) != 32:
        raise ConfigError(f"manifest: {what} must be 32 bytes (64 hex digits), got {len(raw)}")
    public_key_from_bytes(raw)
    return raw


def _name(name: Any) -> str:
    if not is_id(name):
        raise ConfigError(f"manifest: site name {name!r} must be 1-64 letters, digits, - _ . (starting alphanumeric)")
    return name


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed, structurally valid manifest (signatures not yet checked: see :meth:`verify`)."""

    coordinator: bytes
    sites: Mapping[str, bytes]
    room_id: str = ""
    signatures: Mapping[str, bytes] = dataclasses.field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """Everything a signature covers, as JSON-ready data."""
        return {
            "format": FORMAT,
            "version": 1,
            "room_id": self.room_id,
            "coordinator": self.coordinator.hex(),
            "sites": {n: self.sites[n].hex() for n in sorted(self.sites)},
        }

    def signed_bytes(self) -> bytes:
        """The exact bytes each data owner signs."""
        return MANIFEST_DOMAIN + json.dumps(self.body(), sort_keys=True, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "signatures": {n: self.signatures[n].hex() for n in sorted(self.signatures)}}

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse and check the structure; raises :class:`ConfigError` saying what is wrong."""
        if not isinstance(data, dict):
            raise ConfigError("manifest: the file must hold one JSON object")
        if data.get("format") != FORMAT or data.get("version") != 1:
            raise ConfigError(f"manifest: not a {FORMAT} version 1 file")
        extra = set(data) - {"format", "version", "room_id", "coordinator", "sites", "signatures"}
        if extra:
            raise ConfigError(f"manifest: unexpected fields {sorted(extra)}")
        room_id = data.get("room_id", "")
        if not isinstance(room_id, str) or len(room_id) > 128:
            raise ConfigError("manifest: room_id must be a string (at most 128 characters)")
        sites = data.get("sites")
        if not isinstance(sites, dict) or not 1 <= len(sites) <= _MAX_SITES:
            raise ConfigError(f"manifest: sites must map 1 to {_MAX_SITES} site names to public keys")
        parsed = {_name(n): _key(k, f"the key of site {n!r}") for n, k in sites.items()}
        if len(set(parsed.values())) != len(parsed):
            raise ConfigError("manifest: two sites have the same public key")
        coordinator = _key(data.get("coordinator"), "coordinator")
        if coordinator in parsed.values():
            raise ConfigError("manifest: the coordinator's key is also listed as a site's key")
        sigs = data.get("signatures", {})
        if not isinstance(sigs, dict):
            raise ConfigError("manifest: signatures must map site names to hex signatures")
        signatures: dict[str, bytes] = {}
        for n, s in sigs.items():
            if n not in parsed:
                raise ConfigError(f"manifest: signature by {n!r}, which is not a site of this manifest")
            try:
                signatures[n] = bytes.fromhex(s) if isinstance(s, str) else b""
            except ValueError:
                signatures[n] = b""
            if len(signatures[n]) != 64:
                raise ConfigError(f"manifest: the signature of {n!r} must be 64 bytes of hex")
        return cls(coordinator=coordinator, sites=parsed, room_id=room_id, signatures=signatures)

    def verify(self, *, require: tuple[str, ...] | str = ()) -> list[str]:
        """Check every signature; return the sorted signers.

        ``require``: names that must have signed (``"all"``: every site). Raises
        :class:`~fedjax_room.errors.BadSignatureError` for a signature that does not verify and
        :class:`ConfigError` for a missing required one.
        """
        message = self.signed_bytes()
        for n, sig in sorted(self.signatures.items()):
            try:
                verify(public_key_from_bytes(self.sites[n]), sig, message)
            except BadSignatureError:
                raise BadSignatureError(
                    f"manifest: the signature of {n!r} does not verify (the manifest was changed after it signed, "
                    "or it was signed with another key); get the manifest again from the data owners"
                ) from None
        wanted = tuple(sorted(self.sites)) if require == "all" else tuple(require)
        missing = [n for n in wanted if n not in self.signatures]
        if missing:
            raise ConfigError(
                f"manifest: not signed by {', '.join(missing)}; ask them to run `fedjax-room manifest sign`"
            )
        return sorted(self.signatures)

    def site_key(self, name: str) -> bytes | None:
        return self.sites.get(name)

    def name_of(self, key: bytes) -> str | None:
        """The site whose key is ``key``, if any."""
        for n, k in self.sites.items():
            if k == bytes(key):
                return n
        return None


def create_manifest(sites: Mapping[str, bytes], coordinator: bytes, *, room_id: str = "") -> Manifest:
    """A new unsigned manifest (validated as if read from a file)."""
    return Manifest.from_dict(
        {
            "format": FORMAT,
            "version": 1,
            "room_id": room_id,
            "coordinator": bytes(coordinator).hex(),
            "sites": {n: bytes(k).hex() for n, k in sites.items()},
        }
    )


def sign_manifest(manifest: Manifest, name: str, key: Ed25519PrivateKey) -> Manifest:
    """``manifest`` with ``name``'s signature added; ``key`` must be the key the manifest lists for ``name``."""
    listed = manifest.sites.get(name)
    if listed is None:
        raise ConfigError(f"manifest: {name!r} is not a site of this manifest; only listed data owners sign it")
    if public_key_bytes(key) != listed:
        raise ConfigError(f"manifest: the key given is not the one the manifest lists for {name!r}")
    signatures = {**manifest.signatures, name: sign(key, manifest.signed_bytes())}
    return dataclasses.replace(manifest, signatures=signatures)


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and parse a manifest file (signatures are checked too)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"manifest {path} does not exist; make one with `fedjax-room manifest create`") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ConfigError(f"manifest {path} is over {MAX_MANIFEST_BYTES} bytes")
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"manifest {path} is not JSON: {exc}") from None
    manifest = Manifest.from_dict(parsed)
    manifest.verify()
    return manifest


def save_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write ``manifest`` as indented JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
