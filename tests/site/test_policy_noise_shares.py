"""A site's say on distributed noise: ``noise_shares = false`` makes it add all of the noise itself."""

from __future__ import annotations

import numpy as np
import pytest

from fedjax_room.errors import PolicyError
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.secure import SecureTrain
from fedjax_room.secagg import SecAggConfig
from fedjax_room.secagg.encoding import to_signed
from fedjax_room.secagg.record_noise import MODULUS_BITS, RecordNoise
from fedjax_room.site.policy import Policy
from fedjax_room.site.secure import secure_vector


def _job(n: int = 3, t: int = 3, d: int = 2000) -> SecureTrain:
    keys = {i: bytes([i]) * 32 for i in range(1, n + 1)}
    cfg = SecAggConfig("run-1/1", keys, vector_length=d, modulus_bits=MODULUS_BITS, min_clients=t)
    start = m.RoundStart(run_id="run-1", round=1, phase="train", params=b"", cohort=n, timeout=10.0)
    setup = m.SecAggSetup(run_id="run-1", round=1, config=cfg.to_dict(), id=1, fraction=0.5, phase="train")
    return SecureTrain(start, setup)


def test_a_site_that_does_not_count_on_the_others_adds_all_of_the_noise():
    config = RunConfig.from_dict({})
    assert config.distributed_noise
    job, zeros, sigma = _job(), {"w": np.zeros(2000)}, 4.0
    shared = to_signed(secure_vector(zeros, config, job, 1, sigma), MODULUS_BITS).astype(float)
    alone = to_signed(secure_vector(zeros, config, job, 1, sigma, share=False), MODULUS_BITS).astype(float)
    mech = RecordNoise(clip_norm=config.clip_norm, noise_multiplier=sigma, dimension=2000, max_sites=3, min_sites=3)
    assert np.var(shared) == pytest.approx(mech.central_variance / 3, rel=0.1)  # 1/t of the noise
    assert np.var(alone) == pytest.approx(mech.central_variance, rel=0.1)  # all of it
    # the coordinator's fraction (0.5 here) changes nothing a distributed-noise site sends
    assert np.var(shared) == pytest.approx(np.var(alone) / 3, rel=0.15)


def test_the_policy_reads_noise_shares():
    assert Policy.from_dict({}).noise_shares is True
    assert Policy.from_dict({"noise_shares": False}).noise_shares is False
    with pytest.raises(PolicyError, match="noise_shares"):
        Policy.from_dict({"noise_shares": "no"})
