"""The public size a site plans with: declared in its policy, or one DP count released at first start.

A site's exact record count must not leak through what it releases (issue 13, item 3): the sampling
rate ``q = batch_size / N``, the noise calibrated from ``q``, the epsilons and the FedAvg weight would all
be functions of ``N``. So a site computes them from a **public** size instead:

* ``declared``: the policy's ``declared_train_records`` / ``declared_heldout_records``, sizes the data
  owner declares public (no privacy spent; an assumption the owner makes);
* ``dp_count``: otherwise, once, the first time the site starts, it releases
  ``(n_train, n_heldout) + N(0, z^2 I)`` rounded, with ``z =`` :data:`SIZE_NOISE_MULTIPLIER`. Adding or
  removing one record moves that vector by 1 in L2, so this is a Gaussian mechanism with noise multiplier
  ``z``, composed into the site's (sample-level) ledger under the key :data:`SIZE_KEY` (about +0.03 on a
  ledger at epsilon 3, delta 1e-5). The drawn value is persisted in ``STATE/public_size.json`` *before*
  it is charged or used, and never drawn again: a restart reads it back (and charges it if a crash came
  between the write and the charge), so it is one release, paid once.

The site then trains with ``q`` fixed from the public training size over its real records (Poisson
sampling at a fixed ``q`` is private for any ``N``), publishes ``record_count = "~" +
coarse_count(public train + public held-out)``, and evaluates at most :attr:`PublicSize.heldout_bound`
held-out records, so the site-level sensitivity of an evaluation release is public too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
from dp_accounting import DpEvent, GaussianDpEvent

from fedjax_room.errors import BudgetExceededError, StateError
from fedjax_room.files import atomic_write
from fedjax_room.site.ledger import Ledger
from fedjax_room.site.plan import coarse_count

__all__ = ["SIZE_KEY", "SIZE_NOISE_MULTIPLIER", "PublicSize", "resolve_public_size", "size_event"]

#: Noise multiplier (records of standard deviation) of the one-time DP count of a site's sizes.
SIZE_NOISE_MULTIPLIER = 10.0
#: The ledger key of that release (``@`` cannot start a run id, so it never collides with a run).
SIZE_KEY = "@size/0/count"
#: A DP-counted held-out size is widened by this many noise standard deviations into the evaluation bound.
_HELDOUT_MARGIN_SD = 3.0
_FILE = "public_size.json"


def size_event(noise_multiplier: float = SIZE_NOISE_MULTIPLIER) -> DpEvent:
    """The DP event of the one-time count: a Gaussian mechanism (L2 sensitivity 1) at ``noise_multiplier``."""
    return GaussianDpEvent(noise_multiplier)


@dataclasses.dataclass(frozen=True)
class PublicSize:
    """A site's public sizes. Every plan, weight and published count is computed from these."""

    train: int
    heldout: int
    source: str  # "declared" | "dp_count"
    noise_multiplier: float | None = None

    @property
    def heldout_bound(self) -> int:
        """The most held-out records the site evaluates (public): declared exactly, or the DP count + 3 sd."""
        if self.source == "declared" or self.noise_multiplier is None:
            return self.heldout
        return self.heldout + math.ceil(_HELDOUT_MARGIN_SD * self.noise_multiplier)

    def record_count(self) -> str:
        """The coarse count the site publishes in ``site_status`` (from the public sizes only)."""
        return f"~{coarse_count(self.train + self.heldout)}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "public size") -> PublicSize:
        try:
            out = cls(
                train=data["train"],
                heldout=data["heldout"],
                source=data["source"],
                noise_multiplier=data.get("noise_multiplier"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"{where} is malformed ({exc}); restore it from a backup, never delete it") from None
        ok = (
            isinstance(out.train, int)
            and not isinstance(out.train, bool)
            and out.train >= 1
            and isinstance(out.heldout, int)
            and not isinstance(out.heldout, bool)
            and out.heldout >= 0
            and out.source in ("declared", "dp_count")
            and (
                out.noise_multiplier is None
                or (isinstance(out.noise_multiplier, int | float) and out.noise_multiplier > 0)
            )
        )
        if not ok:
            raise StateError(f"{where} holds bad values {data!r}; restore it from a backup, never delete it")
        return out


def resolve_public_size(
    state_dir: str | os.PathLike[str],
    ledger: Ledger,
    *,
    n_train: int,
    n_heldout: int,
    declared_train: int | None = None,
    declared_heldout: int | None = None,
    noise_multiplier: float = SIZE_NOISE_MULTIPLIER,
    seed: int | None = None,
) -> PublicSize:
    """The site's public sizes: the declared ones, else its stored DP count, else a new one (charged to ``ledger``).

    ``seed`` seeds the count's noise: a secret one (the agent derives it from its secret, like all its noise, so
    a site rebuilt from the same secret and data counts the same); None draws from the OS.

    Raises :class:`BudgetExceededError` if a new count would take the ledger past its cap (nothing is
    charged or used; declare the sizes in the policy instead) and :class:`StateError` for a corrupt file.
    """
    if declared_train is not None and declared_heldout is not None:
        return PublicSize(train=int(declared_train), heldout=int(declared_heldout), source="declared")
    path = Path(state_dir) / _FILE
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StateError(f"{path} is unreadable ({exc}); restore it from a backup, never delete it") from None
        size = PublicSize.from_dict(data, where=str(path))
    else:
        if ledger.would_exceed(size_event(noise_multiplier)):
            raise BudgetExceededError(
                f"releasing this site's DP record count (noise multiplier {noise_multiplier:g}) would take its ledger "
                f"past its cap {ledger.epsilon_cap:g}; declare declared_train_records and declared_heldout_records "
                "in policy.toml instead"
            )
        rng = np.random.default_rng([secrets.randbits(128) if seed is None else int(seed), 13])
        noise = rng.normal(0.0, noise_multiplier, size=2)
        size = PublicSize(
            train=max(1, int(round(n_train + noise[0]))),
            heldout=max(0, int(round(n_heldout + noise[1]))),
            source="dp_count",
            noise_multiplier=float(noise_multiplier),
        )
        atomic_write(path, json.dumps(size.to_dict(), sort_keys=True).encode())  # persisted before it is charged
        os.chmod(path, 0o600)
    if size.source == "dp_count" and ledger.released(SIZE_KEY) is None:
        assert size.noise_multiplier is not None
        ledger.commit(
            SIZE_KEY,
            size_event(size.noise_multiplier),
            {"round": 0, "phase": "count", "public_size": size.to_dict()},
            run_delta=ledger.delta,
        )
    return size
