import numpy as np
import pytest

from fedjax_room.errors import ConfigError
from fedjax_room.secagg.encoding import FixedPointCodec, from_signed, ring_dtype, to_signed


@pytest.mark.parametrize("bits", [16, 32, 48, 64])
def test_signed_roundtrip(bits):
    half = 2 ** (bits - 1)
    values = np.array([0, 1, -1, half - 1, -half, 12345, -12345], dtype=np.int64)
    ring = from_signed(values, bits)
    assert ring.dtype == ring_dtype(bits)
    assert int(ring.max()) < 2**bits
    assert np.array_equal(to_signed(ring, bits), values)


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("n", [1, 3, 10, 50])
def test_sum_decodes_within_documented_bound(bits, n):
    codec = FixedPointCodec(clip=2.0, max_summands=n, modulus_bits=bits)
    rng = np.random.default_rng(n)
    xs = rng.uniform(-3, 3, size=(n, 257))  # some values outside the clip range
    total = np.zeros(257, dtype=codec.dtype)
    for x in xs:
        total += codec.encode(x)
    expected = np.clip(xs, -2.0, 2.0).sum(axis=0)
    err = np.abs(codec.decode(total) - expected)
    assert err.max() <= codec.error_bound(n)
    if bits == 32:
        assert codec.error_bound(n) < 2e-6


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_extremes_never_wrap(bits):
    n = 7
    codec = FixedPointCodec(clip=1.0, max_summands=n, modulus_bits=bits)
    for value in (1.0, -1.0, 1e9, -1e9):
        total = np.zeros(3, dtype=codec.dtype)
        for _ in range(n):
            total += codec.encode(np.full(3, value))
        if bits < 32:
            total &= codec.dtype.type(codec.modulus - 1)
        assert np.allclose(codec.decode(total), n * np.sign(value), atol=codec.error_bound(n))


def test_error_bound_value_for_ten_sites():
    codec = FixedPointCodec(clip=1.0, max_summands=10)
    assert codec.scale == pytest.approx((2**31 - 1) // 10)
    assert codec.error_bound() == pytest.approx(10 / (2 * codec.scale) + 10 * 2**-52)
    assert codec.error_bound() < 3e-8


def test_bad_settings():
    with pytest.raises(ConfigError):
        FixedPointCodec(clip=0.0, max_summands=3)
    with pytest.raises(ConfigError):
        FixedPointCodec(clip=1.0, max_summands=0)
    with pytest.raises(ConfigError):
        FixedPointCodec(clip=1.0, max_summands=300, modulus_bits=8)  # 127 // 300 == 0
    with pytest.raises(ConfigError):
        FixedPointCodec(clip=1.0, max_summands=3, modulus_bits=128)
    with pytest.raises(ConfigError):
        FixedPointCodec(1.0, 3).encode(np.array([np.nan]))
    with pytest.raises(ConfigError):
        to_signed(np.zeros(3, dtype=np.int64), 32)


def test_codec_dict_roundtrip():
    codec = FixedPointCodec(clip=0.5, max_summands=20, modulus_bits=64)
    assert FixedPointCodec.from_dict(codec.to_dict()) == codec
    with pytest.raises(ConfigError):
        FixedPointCodec.from_dict({"clip": 1.0})
