"""A connection as the coordinator machine sees it: its handshake state, who it is, what it watches."""

from __future__ import annotations

import dataclasses

__all__ = ["Conn"]


@dataclasses.dataclass
class Conn:
    """One connection (``id`` from the glue). ``state``: ``challenged`` until its ``hello`` verifies, then
    ``ready``, finally ``closed``; ``reported``: a site has sent its ``site_status``; ``watching``: the runs whose
    events an analyst receives."""

    id: int
    nonce: bytes
    opened: float
    state: str = "challenged"  # challenged | ready | closed
    role: str = ""
    name: str = ""
    reported: bool = False
    watching: set[str] = dataclasses.field(default_factory=set)
