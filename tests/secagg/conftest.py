"""Fixtures for the secure-aggregation tests: rosters of identities, rounds and random ring inputs."""

import numpy as np
import pytest

from fedjax_room.identity import generate_key, public_key_bytes
from fedjax_room.secagg import SecAggConfig

_KEYS = {}


def _identity(cid):
    if cid not in _KEYS:  # Ed25519 keygen is cheap, but there is no reason to redo it per test
        _KEYS[cid] = generate_key()
    return _KEYS[cid]


class Room:
    """A round's config, its clients' identity keys and one random input per client."""

    def __init__(self, n, length=16, bits=32, seed=0, **config):
        self.keys = {cid: _identity(cid) for cid in range(1, n + 1)}
        self.config = SecAggConfig(
            f"test-round-{n}-{seed}-{sorted(config.items())}",
            {cid: public_key_bytes(k) for cid, k in self.keys.items()},
            vector_length=length,
            modulus_bits=bits,
            **config,
        )
        rng = np.random.default_rng(seed)
        dtype = np.dtype("<u4") if bits <= 32 else np.dtype("<u8")
        self.inputs = {cid: rng.integers(0, 1 << bits, length, dtype=np.uint64).astype(dtype) for cid in self.keys}

    def expected(self, ids):
        bits = self.config.modulus_bits
        total = 0
        for cid in ids:
            total = total + self.inputs[cid].astype(object)
        return np.array([int(v) % (1 << bits) for v in total], dtype=self.inputs[1].dtype)


@pytest.fixture
def room():
    return Room
