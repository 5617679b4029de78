"""Simulated rooms: the in-process federated simulation (:mod:`.harness`), the embedded demo room that starts
real coordinator and site processes (:mod:`.demo`, :func:`~fedjax_room.sim.demo.start_room`), and the process
launcher they use (:mod:`.launch`).

Names are imported on first use, so ``fedjax_room.sim.launch`` (imported by every spawned room process) does not
pull in JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["RoundRecord", "SimResult", "SimSpec", "run_simulation", "site_name"]

_HARNESS = frozenset(__all__)


def __getattr__(name: str) -> Any:
    if name in _HARNESS:
        return getattr(importlib.import_module("fedjax_room.sim.harness"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
