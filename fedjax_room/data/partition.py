"""Split one dataset across simulated sites: IID, or label-skewed with a Dirichlet(alpha) prior.

With ``alpha``, each class's examples are divided among the sites in proportions
drawn from ``Dirichlet(alpha, ..., alpha)`` (Hsu et al., 2019): small alpha (0.1)
gives sites dominated by one or two labels, large alpha (100) is close to IID.
Draws are repeated until every site holds at least ``min_size`` examples; if that
keeps failing, examples are moved from the largest sites to the smallest. Every
result is deterministic in ``seed``; the sites are disjoint and cover the dataset.
"""

from __future__ import annotations

import numpy as np

from fedjax_room.data.dataset import Dataset
from fedjax_room.errors import ConfigError

__all__ = ["partition"]

_MAX_DRAWS = 100


def _default_min_size(n: int, num_sites: int) -> int:
    return max(1, min(10, n // (2 * num_sites)))


def _dirichlet_indices(
    y: np.ndarray, num_classes: int, num_sites: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    by_class = [np.flatnonzero(y == c) for c in range(num_classes)]
    sites: list[list[np.ndarray]] = []
    for _ in range(_MAX_DRAWS):
        sites = [[] for _ in range(num_sites)]
        for members in by_class:
            if len(members) == 0:
                continue
            members = rng.permutation(members)
            proportions = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
            for site, part in enumerate(np.split(members, cuts)):
                sites[site].append(part)
        sizes = [sum(len(p) for p in parts) for parts in sites]
        if min(sizes) >= min_size:
            break
    out = [np.concatenate(parts) if parts else np.empty(0, np.int64) for parts in sites]
    # Fallback: top up small sites from the largest, so every site has min_size examples.
    while True:
        counts = np.array([len(p) for p in out])
        small = int(np.argmin(counts))
        if counts[small] >= min_size:
            return out
        large = int(np.argmax(counts))
        need = min(min_size - counts[small], counts[large] - min_size)
        donated = rng.choice(len(out[large]), size=need, replace=False)
        keep = np.ones(len(out[large]), dtype=bool)
        keep[donated] = False
        out[small] = np.concatenate([out[small], out[large][donated]])
        out[large] = out[large][keep]


def partition(
    dataset: Dataset, num_sites: int, *, alpha: float | None = None, seed: int = 0, min_size: int | None = None
) -> list[Dataset]:
    """Split ``dataset`` into ``num_sites`` disjoint site datasets.

    ``alpha=None`` gives an IID split (shuffled, near-equal sizes); a positive
    ``alpha`` gives Dirichlet(alpha) label skew. ``min_size`` (default
    ``min(10, N // (2 * num_sites))``, at least 1) is the fewest examples any site gets.
    """
    if isinstance(num_sites, bool) or not isinstance(num_sites, int | np.integer) or num_sites < 1:
        raise ConfigError(f"num_sites must be a positive integer, got {num_sites!r}")
    n = len(dataset)
    if num_sites > n:
        raise ConfigError(f"cannot give {num_sites} sites examples from a dataset of {n}; use fewer sites")
    if min_size is None:
        min_size = _default_min_size(n, num_sites)
    if isinstance(min_size, bool) or not isinstance(min_size, int | np.integer) or min_size < 0:
        raise ConfigError(f"min_size must be a non-negative integer, got {min_size!r}")
    if min_size * num_sites > n:
        raise ConfigError(
            f"cannot give each of {num_sites} sites {min_size} examples from {n}; lower min_size or the site count"
        )
    rng = np.random.default_rng(seed)
    if alpha is None:
        parts = np.array_split(rng.permutation(n), num_sites)
    else:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0 or not np.isfinite(alpha):
            raise ConfigError(
                f"alpha must be a positive number (e.g. 0.1 for strong skew, 100 for near-IID), got {alpha!r}"
            )
        parts = _dirichlet_indices(dataset.y, dataset.num_classes, int(num_sites), float(alpha), int(min_size), rng)
        parts = [rng.permutation(p) for p in parts]
    return [dataset.subset(p) for p in parts]
