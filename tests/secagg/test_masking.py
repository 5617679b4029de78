import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedjax_room.errors import ConfigError, CryptoError
from fedjax_room.secagg import masking
from fedjax_room.secagg.masking import (
    add_mask,
    default_neighbours,
    expand_mask,
    generate_keypair,
    hkdf,
    neighbour_graph,
    pairwise_seed,
    pairwise_sign,
    x25519_public_bytes,
)


def test_expansion_is_the_chacha20_keystream():
    seed = bytes(range(32))
    key = hkdf(seed, salt=b"", info=b"fedjax-room/secagg/1/prg/mask")
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(4 * 1000))
    assert np.array_equal(expand_mask(seed, 1000, 32), np.frombuffer(stream, "<u4"))
    assert expand_mask(seed, 1000, 64).dtype == np.dtype("<u8")


def test_expansion_deterministic_distinct_and_chunked(monkeypatch):
    a = expand_mask(b"a" * 32, 5000, 32)
    assert np.array_equal(a, expand_mask(b"a" * 32, 5000, 32))
    assert np.mean(a == expand_mask(b"b" * 32, 5000, 32)) < 0.01
    monkeypatch.setattr(masking, "_CHUNK", 4 * 333)  # stream in odd-sized chunks
    assert np.array_equal(a, expand_mask(b"a" * 32, 5000, 32))


def test_masks_in_small_rings():
    m = expand_mask(b"s" * 32, 10000, 12)
    assert m.dtype == np.dtype("<u4") and int(m.max()) < 2**12 and int(m.max()) > 2**11


def test_add_then_subtract_cancels():
    acc = np.arange(777, dtype=np.uint64)
    add_mask(acc, b"k" * 32, 1, 64)
    assert not np.array_equal(acc, np.arange(777, dtype=np.uint64))
    add_mask(acc, b"k" * 32, -1, 64)
    assert np.array_equal(acc, np.arange(777, dtype=np.uint64))
    with pytest.raises(ConfigError):
        add_mask(np.zeros(3, np.uint64), b"k" * 32, 1, 32)


def test_mask_is_uniform():
    m = expand_mask(b"u" * 32, 200_000, 32)
    assert abs(m.astype(np.float64).mean() / 2**32 - 0.5) < 0.005
    counts = np.bincount((m >> 28).astype(np.int64), minlength=16)
    chi2 = float((((counts - counts.mean()) ** 2) / counts.mean()).sum())
    assert chi2 < 45  # 15 degrees of freedom; p ~ 1e-4


def test_pairwise_seed_agrees_and_is_bound_to_round_and_pair():
    u, v, w = generate_keypair(), generate_keypair(), generate_keypair()
    pu, pv = x25519_public_bytes(u), x25519_public_bytes(v)
    s_uv = pairwise_seed(u, pv, context=b"r1", me=3, peer=9)
    assert s_uv == pairwise_seed(v, pu, context=b"r1", me=9, peer=3)
    assert s_uv != pairwise_seed(u, pv, context=b"r2", me=3, peer=9)
    assert s_uv != pairwise_seed(u, pv, context=b"r1", me=3, peer=8)
    assert s_uv != pairwise_seed(w, pv, context=b"r1", me=3, peer=9)
    assert pairwise_sign(3, 9) == 1 and pairwise_sign(9, 3) == -1
    with pytest.raises(CryptoError):
        pairwise_seed(u, bytes(32), context=b"r1", me=3, peer=9)  # low-order point


@pytest.mark.parametrize("n,k", [(10, 4), (50, 8), (50, 7), (100, 14), (21, 6)])
def test_harary_graph_is_regular_symmetric_and_seeded(n, k):
    ids = list(range(1, n + 1))
    g = neighbour_graph(ids, k, b"s" * 32)
    degree = k + (k % 2)
    assert all(len(v) == degree and i not in v for i, v in g.items())
    assert all(i in g[j] for i, v in g.items() for j in v)
    assert g == neighbour_graph(ids, k, b"s" * 32)
    assert g != neighbour_graph(ids, k, b"t" * 32)


def test_full_graph_and_default_degree():
    g = neighbour_graph([1, 2, 3, 4], None, b"s" * 32)
    assert g[1] == {2, 3, 4}
    assert neighbour_graph([1, 2, 3, 4], 3, b"s" * 32) == g
    assert default_neighbours(5) == 4 and default_neighbours(10) == 9
    assert default_neighbours(100) == 20 and default_neighbours(1000) == 30
