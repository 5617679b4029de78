"""A site's secret, and the seeds derived from it: nobody without the secret can reproduce the site's noise.

``STATE/secret`` holds 32 random bytes (mode 0600), created on first start. Every seed the site uses (training,
evaluation noise, the Skellam share of a secure round, the DP count of its size, the held-out split) is
HMAC-SHA256(secret, ...) of public values, so it is fixed for a release (asked again, the same noise) and secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from fedjax_room.errors import StateError
from fedjax_room.protocol.codec import pack

__all__ = ["derive_seed", "load_secret"]


def load_secret(state_dir: Path) -> bytes:
    """The site's seed secret (created on first use, mode 0600)."""
    path = state_dir / "secret"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
            fh.flush()
            os.fsync(fh.fileno())
    data = path.read_bytes()
    if len(data) != 32:
        raise StateError(f"{path} must hold 32 bytes; restore it (deleting it changes every future seed)")
    return data


def derive_seed(secret: bytes, run_id: str, seed: int, round: int, phase: str) -> int:
    """A 63-bit seed for ``(run, the run's seed, round, phase)``, keyed by the site's ``secret``."""
    mac = hmac.new(secret, pack([run_id, seed, round, phase]), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") & ((1 << 63) - 1)
