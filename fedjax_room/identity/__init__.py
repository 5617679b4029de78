"""Ed25519 identities: key files, fingerprints, signing and verification."""

from fedjax_room.identity.keys import (
    fingerprint,
    generate_key,
    load_private_key,
    load_public_key,
    public_key_bytes,
    public_key_from_bytes,
    save_private_key,
    save_public_key,
    sign,
    verify,
)

__all__ = [
    "fingerprint",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "public_key_bytes",
    "public_key_from_bytes",
    "save_private_key",
    "save_public_key",
    "sign",
    "verify",
]
