import itertools
import os
import random

import pytest

from fedjax_room.errors import ConfigError, CryptoError
from fedjax_room.secagg.shamir import (
    PRIME,
    combine,
    combine_bytes,
    lagrange_weights,
    share_from_bytes,
    share_to_bytes,
    split,
    split_bytes,
)


def _probably_prime(n: int, rounds: int = 40) -> bool:
    if n < 2 or n % 2 == 0:
        return n == 2
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(n)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_prime_is_the_smallest_above_2_256():
    assert _probably_prime(PRIME)
    assert not any(_probably_prime(c) for c in range(2**256 + 1, PRIME, 2))


def test_any_t_shares_reconstruct():
    secret = random.Random(0).randrange(PRIME)
    xs = [3, 7, 11, 20, 21]
    shares = split(secret, 3, xs)
    for subset in itertools.combinations(xs, 3):
        assert combine({x: shares[x] for x in subset}, 3) == secret
    assert combine(shares, 3) == secret  # more than t is fine


def test_fewer_than_t_shares_refuse():
    shares = split(42, 4, [1, 2, 3, 4, 5])
    with pytest.raises(CryptoError, match="4 are needed"):
        combine({x: shares[x] for x in (1, 2, 3)}, 4)


def test_t_minus_one_shares_fit_every_secret():
    # Information-theoretic hiding: for any candidate secret there is a degree-(t-1) polynomial through it
    # and the t-1 shares an observer holds, so the shares rule nothing out.
    t, xs = 3, [1, 2, 3, 4]
    shares = split(123456789, t, xs)
    seen = {x: shares[x] for x in xs[: t - 1]}
    for candidate in (0, 1, 987654321, PRIME - 1):
        # interpolate through (0, candidate) and the seen shares; evaluate at the seen points again
        points = {0: candidate, **seen}
        for x, y in seen.items():
            value = 0
            for xk, yk in points.items():
                num, den = 1, 1
                for xm in points:
                    if xm != xk:
                        num = num * (x - xm) % PRIME
                        den = den * (xk - xm) % PRIME
                value = (value + yk * num * pow(den, -1, PRIME)) % PRIME
            assert value == y


def test_bytes_roundtrip_and_corruption():
    secret = os.urandom(32)
    shares = split_bytes(secret, 3, [1, 2, 3, 4, 5])
    assert all(len(s) == 33 for s in shares.values())
    assert combine_bytes({x: shares[x] for x in (2, 4, 5)}, 3) == secret
    bad = dict(shares)
    bad[2] = share_to_bytes((share_from_bytes(bad[2]) + 1) % PRIME)
    assert combine_bytes({x: bad[x] for x in (1, 3, 4)}, 3) == secret  # share 2 unused
    recovered = None
    try:
        recovered = combine_bytes({x: bad[x] for x in (1, 2, 3)}, 3)
    except CryptoError:
        pass  # a result above 2^256 is detected
    assert recovered != secret
    with pytest.raises(CryptoError):
        share_from_bytes(PRIME.to_bytes(33, "big"))
    with pytest.raises(CryptoError):
        share_from_bytes(b"short")


def test_bad_arguments():
    with pytest.raises(ConfigError):
        split(1, 3, [1, 2])
    with pytest.raises(ConfigError):
        split(1, 2, [0, 1])  # x = 0 would hand out the secret
    with pytest.raises(ConfigError):
        split(1, 2, [1, 1, 2])
    with pytest.raises(ConfigError):
        split(PRIME, 2, [1, 2])
    with pytest.raises(ConfigError):
        split_bytes(b"x" * 31, 2, [1, 2])


def test_lagrange_weights_sum_to_one():
    assert sum(lagrange_weights((2, 5, 9, 17))) % PRIME == 1  # f = 1 is recovered
