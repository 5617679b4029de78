"""The analyst's Python API: ``connect(url, key=...) -> Room`` (sync face over an async core).

:mod:`.client` (:class:`Room`, :class:`Run`), :mod:`.results` (what calls return). A pure client: it imports
no site, coordinator or training code. The embedded demo room lives in :mod:`fedjax_room.sim.demo`.
"""

from fedjax_room.analyst.client import Room, Run, connect
from fedjax_room.analyst.queries import QueryResult, parse_query
from fedjax_room.analyst.results import (
    BudgetReport,
    PrivacyReport,
    Refusal,
    RoundResult,
    RunSummary,
    SiteBudget,
    SiteInfo,
    SitePrivacy,
)

__all__ = [
    "BudgetReport",
    "PrivacyReport",
    "QueryResult",
    "Refusal",
    "Room",
    "RoundResult",
    "Run",
    "RunSummary",
    "SiteBudget",
    "SiteInfo",
    "SitePrivacy",
    "connect",
    "parse_query",
]
