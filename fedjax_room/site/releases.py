"""A site's stored releases: what each release holds, written before its ledger commit, resent never recomputed.

A release (``run/round/phase``) is computed, **stored** here, then its cost is committed to the ledger together
with the digest :meth:`ReleaseStore.store` returns, and only then sent. Asked again, the agent answers with
:meth:`ReleaseStore.stored`: exactly the stored content, checked against the committed digest, or a refusal. A
committed release whose stored copy is lost or differs is refused (:class:`~fedjax_room.errors.StateError`),
never recomputed: that would reuse its noise on whatever parameters come with the request.

Layout::

    STATE/releases/<run>/<round>-<phase>.release   what the release holds (payload or noised counts), msgpack
    STATE/releases/<run>/<round>-train.ring.npy    the ring vector of a secure round (covered by the same digest)
    STATE/releases/<run>/<round>-<phase>.msgpack   the sent frame, as an older agent stored it after its commit
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_room.errors import RefusedError, StateError
from fedjax_room.files import atomic_write
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import digest, pack, unpack

__all__ = ["ReleaseStore"]

log = logging.getLogger("fedjax_room.site")


class ReleaseStore:
    """The releases of the site ``name`` under ``state_dir/releases`` (run ids are checked by the agent)."""

    def __init__(self, state_dir: Path, name: str) -> None:
        self.root = Path(state_dir) / "releases"
        self.name = name

    def _path(self, run_id: str, round: int, phase: str) -> Path:
        return self.root / run_id / f"{round}-{phase}.msgpack"

    def ring_path(self, run_id: str, round: int) -> Path:
        """Where the ring vector of a secure training round is kept."""
        return self._path(run_id, round, "train").with_suffix(".ring.npy")

    def _content_path(self, run_id: str, round: int, phase: str) -> Path:
        return self._path(run_id, round, phase).with_suffix(".release")

    @staticmethod
    def _digest(content: bytes, ring: bytes) -> str:
        return digest(pack([content, ring]))

    def store(self, run_id: str, round: int, phase: str, content: dict[str, Any], vector: Any) -> str:
        """Persist what a release will hold (its data: payload, ring vector, noised counts) *before* its ledger
        commit; returns the digest the commit records. Never sent: only a committed release leaves the site."""
        ring = b""
        if vector is not None:
            buf = io.BytesIO()
            np.save(buf, np.asarray(vector), allow_pickle=False)
            ring = buf.getvalue()
            atomic_write(self.ring_path(run_id, round), ring)
        data = pack(content)
        atomic_write(self._content_path(run_id, round, phase), data)
        return self._digest(data, ring)

    def stored(self, key: str, record: dict[str, Any], round: int, phase: str) -> tuple[dict[str, Any], Any]:
        """The content (and ring vector) committed under ``key`` (ledger ``record``), checked against the committed
        digest; refused (:class:`StateError`) if it is lost or differs, and a failed release has nothing to resend."""
        run_id = key.split("/", 1)[0]
        if record.get("failed"):
            raise RefusedError(
                f"{self.name}: {phase} of round {round} failed after its privacy cost was spent; nothing to resend",
                party=self.name,
                reason="site_error",
            )
        path, ring_path = self._content_path(run_id, round, phase), self.ring_path(run_id, round)
        want = record.get("release")
        if want is not None and path.exists():
            data = path.read_bytes()
            ring = ring_path.read_bytes() if phase == "train" and ring_path.exists() else b""
            if self._digest(data, ring) == want:
                vector = np.load(io.BytesIO(ring), allow_pickle=False) if ring else None
                log.info("%s resends %s (already released, nothing spent)", self.name, key)
                return unpack(data), vector
        raise StateError(
            f"{self.name}: release {key} was committed to the ledger but its stored content is missing or does not "
            "match the committed digest; refusing it (recomputing it would reuse its noise on other parameters)"
        )

    def legacy_frame(self, run_id: str, round: int, phase: str) -> m.Message | None:
        """The frame an older version of the agent stored (after its commit), if any."""
        path = self._path(run_id, round, phase)
        if path.exists():
            log.info("%s resends %s/%d/%s (already released, nothing spent)", self.name, run_id, round, phase)
            return m.decode(path.read_bytes(), stored=True)  # written by an older version
        return None
