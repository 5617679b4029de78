"""Simulated rooms: the room's in-process round engine (:mod:`.loopback`, :class:`LoopbackRoom`), the federated
simulation that runs on it (:mod:`.harness`), simulated attacker sites (:mod:`.attacker`), the embedded demo room
that starts real coordinator and site processes (:mod:`.demo`, :func:`~fedjax_room.sim.demo.start_room`), and the
process launcher they use (:mod:`.launch`).

Names are imported on first use, so ``fedjax_room.sim.launch`` (imported by every spawned room process) does not
pull in JAX.
"""

from __future__ import annotations

from fedjax_room._lazy import lazy_names

__all__ = [
    "LoopbackRoom",
    "RoundRecord",
    "RoundResult",
    "SimResult",
    "SimSpec",
    "SiteSetup",
    "TrainResult",
    "run_simulation",
    "site_name",
]

_WHERE = {
    **dict.fromkeys(("RoundRecord", "SimResult", "SimSpec", "run_simulation", "site_name"), "harness"),
    **dict.fromkeys(("LoopbackRoom", "RoundResult", "SiteSetup", "TrainResult"), "loopback"),
}


__getattr__, __dir__ = lazy_names(__name__, _WHERE)
