"""Poisoning attacks for simulations, demos and tests: what a malicious site may send instead of its update.

Each attack is a pure function. *Update* attacks take ``(update, params, key)``
(the site's honest update, the global model it started from, a PRNG key) and
return the update to send; *data* attacks take ``(dataset, params, key)`` and
return the poisoned dataset the site trains on.

==========  ======  ===============================================================================
name        kind    what the malicious site does
==========  ======  ===============================================================================
sign_flip   update  sends ``-scale * update`` (pulls the model back up the loss)
boost       both    trains on flipped labels and sends ``factor * update`` (boosted model
                    poisoning / model replacement, Bhagoji et al. 2019); ``flip_labels=False``
                    boosts an honest update instead
label_flip  data    trains honestly on flipped labels (``y -> C - 1 - y``, or a permutation)
gaussian    update  sends ``N(0, stddev^2)`` noise of the update's shape (a broken or
                    free-riding site)
==========  ======  ===============================================================================

:func:`get_attack` builds an :class:`Attack` by name; :func:`choose_malicious`
draws which sites attack (fixed by a seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_room.data.dataset import Dataset
from fedjax_room.errors import ConfigError

__all__ = [
    "ATTACKS",
    "Attack",
    "boost",
    "choose_malicious",
    "gaussian_noise",
    "get_attack",
    "label_flip",
    "sign_flip",
]

#: Every attack name :func:`get_attack` knows.
ATTACKS = ("sign_flip", "boost", "label_flip", "gaussian")

UpdateAttack = Callable[[Any, Any, jax.Array], Any]
DataAttack = Callable[[Dataset, Any, jax.Array], Dataset]


def _number(value: Any, what: str, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{what} must be positive, got {value!r}")
    return float(value)


def sign_flip(update: Any, params: Any = None, key: jax.Array | None = None, *, scale: float = 1.0) -> Any:
    """``-scale * update``."""
    del params, key
    s = _number(scale, "sign_flip scale")
    return jax.tree_util.tree_map(lambda u: -s * jnp.asarray(u), update)


def boost(update: Any, params: Any = None, key: jax.Array | None = None, *, factor: float = 10.0) -> Any:
    """``factor * update``: the boost that lets one site's update survive averaging with many."""
    del params, key
    f = _number(factor, "boost factor")
    return jax.tree_util.tree_map(lambda u: f * jnp.asarray(u), update)


def gaussian_noise(update: Any, params: Any = None, key: jax.Array | None = None, *, stddev: float = 0.1) -> Any:
    """Independent ``N(0, stddev^2)`` noise of the update's structure, in place of the update."""
    del params
    if key is None:
        raise ConfigError("the gaussian attack needs a PRNG key: pass key=jax.random.key(seed)")
    s = _number(stddev, "gaussian stddev")
    leaves, treedef = jax.tree_util.tree_flatten(update)
    keys = jax.random.split(key, len(leaves))
    noise = [s * jax.random.normal(k, jnp.shape(u), jnp.asarray(u).dtype) for k, u in zip(keys, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, noise)


def label_flip(dataset: Dataset, params: Any = None, key: jax.Array | None = None, *, mapping: Any = None) -> Dataset:
    """The dataset with labels mapped: ``y -> C - 1 - y`` by default, or ``mapping[y]`` (a permutation of classes).

    Features are unchanged.
    """
    del params, key
    c = dataset.num_classes
    if mapping is None:
        table = np.arange(c - 1, -1, -1, dtype=np.int32)
    else:
        table = np.asarray(mapping)
        if table.shape != (c,) or not np.issubdtype(table.dtype, np.integer) or table.min() < 0 or table.max() >= c:
            raise ConfigError(f"label_flip mapping must list a class in [0, {c}) for each of the {c} classes")
        table = table.astype(np.int32)
    return Dataset(dataset.x, table[dataset.y], dataset.schema)


class Attack(NamedTuple):
    """A named attack: ``data`` poisons the site's dataset before training, ``update`` the update after.

    Either may be ``None``. ``options`` are the keyword arguments it was built with.
    """

    name: str
    data: DataAttack | None
    update: UpdateAttack | None
    options: dict[str, Any]


def get_attack(name: str, **options: Any) -> Attack:
    """The attack ``name`` (one of :data:`ATTACKS`) with its options.

    ``sign_flip(scale=1.0)``, ``boost(factor=10.0, flip_labels=True)``,
    ``label_flip(mapping=None)``, ``gaussian(stddev=0.1)``.
    """
    opts = dict(options)

    def take(allowed: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            raise ConfigError(f"attack {name!r} does not take {unknown}; it takes {sorted(allowed)}")
        return {**allowed, **opts}

    if name == "sign_flip":
        kw = take({"scale": 1.0})
        _number(kw["scale"], "sign_flip scale")
        return Attack(name, None, lambda u, p, k: sign_flip(u, p, k, scale=kw["scale"]), kw)
    if name == "boost":
        kw = take({"factor": 10.0, "flip_labels": True})
        _number(kw["factor"], "boost factor")
        data = label_flip if kw["flip_labels"] else None
        return Attack(name, data, lambda u, p, k: boost(u, p, k, factor=kw["factor"]), kw)
    if name == "label_flip":
        kw = take({"mapping": None})
        return Attack(name, lambda d, p, k: label_flip(d, p, k, mapping=kw["mapping"]), None, kw)
    if name == "gaussian":
        kw = take({"stddev": 0.1})
        _number(kw["stddev"], "gaussian stddev")
        return Attack(name, None, lambda u, p, k: gaussian_noise(u, p, k, stddev=kw["stddev"]), kw)
    raise ConfigError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")


def choose_malicious(num_sites: int, num_malicious: int, seed: int = 0) -> tuple[int, ...]:
    """``num_malicious`` distinct site indices out of ``num_sites``, sorted, fixed by ``seed``."""
    if isinstance(num_sites, bool) or not isinstance(num_sites, int) or num_sites < 1:
        raise ConfigError(f"num_sites must be a positive integer, got {num_sites!r}")
    if isinstance(num_malicious, bool) or not isinstance(num_malicious, int) or not 0 <= num_malicious <= num_sites:
        raise ConfigError(f"num_malicious must be an integer in [0, {num_sites}], got {num_malicious!r}")
    rng = np.random.default_rng(seed)
    return tuple(sorted(int(i) for i in rng.choice(num_sites, size=num_malicious, replace=False)))
