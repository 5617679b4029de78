"""What a site's machine hands its agent for a secure query, and what the agent hands back.

A plain query is a ``query_ask`` job answered with a ``query_answer`` (or ``query_refuse``) frame. A secure one
(:mod:`fedjax_room.protocol.queries`) is a :class:`SecureQuery` job: the ask and the ``secagg_setup`` the site
joined for it (its SecAgg ``min_clients`` sets each site's share of the noise); the agent answers with a
:class:`SecureQueryRelease`, the accounting-only ``query_answer`` (no values) and the ring vector that the
machine gives its SecAgg client to mask.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedjax_room.protocol import messages as m

__all__ = ["QUERY_ROUND", "SecureQuery", "SecureQueryRelease"]

#: The SecAgg "round" of a secure query (its session is ``<query id>/1``).
QUERY_ROUND = 1


@dataclasses.dataclass(frozen=True)
class SecureQuery:
    """(site) A secure query job: the ask, the setup joined for it, and that round's ``min_clients``."""

    ask: m.QueryAsk
    setup: m.SecAggSetup
    min_sites: int

    @property
    def query_id(self) -> str:
        return self.ask.query_id


@dataclasses.dataclass(frozen=True)
class SecureQueryRelease:
    """(site) What a secure query releases: the accounting ``query_answer`` (empty values) and the ring vector."""

    answer: m.QueryAnswer
    vector: np.ndarray
