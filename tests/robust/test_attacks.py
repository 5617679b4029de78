"""Attacks are pure functions of (update or dataset, params, key); the registry and the choice of attackers."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fedjax_room.data import Dataset, Schema
from fedjax_room.errors import ConfigError
from fedjax_room.robust import ATTACKS, choose_malicious, get_attack
from fedjax_room.robust.attacks import boost, gaussian_noise, label_flip, sign_flip


def _update() -> dict:
    return {"w": np.array([1.0, -2.0], np.float32), "b": np.array([0.5], np.float32)}


def test_update_attacks() -> None:
    np.testing.assert_allclose(sign_flip(_update(), scale=2.0)["w"], [-2.0, 4.0])
    np.testing.assert_allclose(boost(_update(), factor=10.0)["b"], [5.0])
    key = jax.random.key(0)
    noise = gaussian_noise({"w": np.zeros((200, 50), np.float32)}, None, key, stddev=0.5)
    assert noise["w"].shape == (200, 50) and float(np.std(noise["w"])) == pytest.approx(0.5, rel=0.05)
    again = gaussian_noise({"w": np.zeros((200, 50), np.float32)}, None, key, stddev=0.5)
    np.testing.assert_array_equal(noise["w"], again["w"])  # pure in the key
    with pytest.raises(ConfigError, match="PRNG key"):
        gaussian_noise(_update())


def test_label_flip() -> None:
    schema = Schema(features=("a",), feature_shape=(1,), label="y", classes=(0, 1, 2))
    data = Dataset(np.zeros((4, 1), np.float32), np.array([0, 1, 2, 2]), schema)
    np.testing.assert_array_equal(label_flip(data).y, [2, 1, 0, 0])
    np.testing.assert_array_equal(label_flip(data, mapping=[1, 2, 0]).y, [1, 2, 0, 0])
    with pytest.raises(ConfigError):
        label_flip(data, mapping=[0, 1])


def test_registry() -> None:
    for name in ATTACKS:
        attack = get_attack(name)
        assert attack.name == name and (attack.data or attack.update)
    boosted = get_attack("boost", factor=5.0)
    assert boosted.data is not None  # trains on flipped labels, then boosts
    assert get_attack("boost", flip_labels=False).data is None
    np.testing.assert_allclose(boosted.update(_update(), None, None)["w"], [5.0, -10.0])
    with pytest.raises(ConfigError, match="unknown attack"):
        get_attack("backdoor")
    with pytest.raises(ConfigError, match="does not take"):
        get_attack("sign_flip", factor=2.0)
    with pytest.raises(ConfigError):
        get_attack("boost", factor=-1.0)


def test_choose_malicious_is_fixed_by_seed() -> None:
    a = choose_malicious(10, 2, seed=3)
    assert a == choose_malicious(10, 2, seed=3) and len(set(a)) == 2 and all(0 <= i < 10 for i in a)
    assert choose_malicious(10, 0) == ()
    with pytest.raises(ConfigError):
        choose_malicious(3, 4)
