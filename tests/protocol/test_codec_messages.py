"""Frames and arrays: round trips, limits, and every malformed input refused with a typed error."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from fedjax_room.errors import FrameTooLargeError, ProtocolError, VersionError
from fedjax_room.protocol import codec
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.config import RunConfig


def test_tree_round_trip_is_exact_and_canonical():
    tree = {"dense_0": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(3, np.float32)}}
    data = codec.pack_tree(tree)
    back = codec.unpack_tree(data)
    np.testing.assert_array_equal(back["dense_0"]["kernel"], tree["dense_0"]["kernel"])
    assert back["dense_0"]["bias"].dtype == np.float32
    assert codec.pack_tree(back) == data  # canonical: same tree, same bytes, same digest


@pytest.mark.parametrize(
    "bad",
    [
        {"dtype": "|O", "shape": [1], "data": b"x" * 8},  # objects never
        {"dtype": "<f4", "shape": [2], "data": b"\0" * 4},  # length mismatch
        {"dtype": "<f4", "shape": [-1], "data": b""},
        {"dtype": "<f4", "shape": [1], "data": "text"},
        {"dtype": "<f4", "shape": [1]},
    ],
)
def test_bad_arrays_are_refused(bad):
    with pytest.raises(ProtocolError):
        codec.decode_array(bad)


def test_huge_array_claim_is_refused_before_allocation():
    with pytest.raises(FrameTooLargeError):
        codec.decode_array({"dtype": "<f4", "shape": [1 << 20, 1 << 20], "data": b""})


def test_message_round_trip_and_validation():
    msg = m.RoundStart(run_id="run-1", round=2, phase="train", params=b"\x01", cohort=3, timeout=5.0)
    assert m.decode(m.encode(msg)) == msg
    body = msgpack.unpackb(m.encode(msg))
    body["round"] = "two"
    with pytest.raises(ProtocolError, match="round"):
        m.decode(msgpack.packb(body))
    body["round"] = 2
    body["extra"] = 1
    with pytest.raises(ProtocolError, match="unexpected"):
        m.decode(msgpack.packb(body))
    del body["extra"], body["phase"]
    with pytest.raises(ProtocolError, match="missing"):
        m.decode(msgpack.packb(body))


def test_version_and_garbage():
    frame = msgpack.packb({"v": 99, "t": "list_runs", "req": 1})
    with pytest.raises(VersionError):
        m.decode(frame)
    for junk in (b"\xc1\xc1", b"", msgpack.packb([1, 2]), msgpack.packb({"v": 1, "t": "nope"})):
        with pytest.raises(ProtocolError):
            m.decode(junk)
    with pytest.raises(FrameTooLargeError):
        m.decode(b"\x00" * 100, max_bytes=10)
    with pytest.raises(ProtocolError):
        m.decode(msgpack.packb({1: 2}))  # non-string keys


def test_error_frame_carries_typed_errors():
    from fedjax_room.errors import PolicyViolation, error_from_dict

    exc = PolicyViolation("cap", party="site-a", reason="epsilon_cap")
    frame = m.decode(m.encode(m.Error.of(exc, req=3)))
    back = error_from_dict(frame.error_dict())
    assert isinstance(back, PolicyViolation) and back.reason == "epsilon_cap" and frame.req == 3


def test_run_config_validation():
    cfg = RunConfig.from_dict({"rounds": 3, "target_epsilon": 2.0})
    assert cfg.noise_multiplier is None and RunConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig.from_dict({"noise_multiplier": 1.1}).target_epsilon is None
    with pytest.raises(Exception, match="exactly one"):
        RunConfig.from_dict({"target_epsilon": 1.0, "noise_multiplier": 1.0})
    with pytest.raises(Exception, match="aggregator"):
        RunConfig.from_dict({"aggregator": "krum9"})
    with pytest.raises(Exception, match="unknown run settings"):
        RunConfig.from_dict({"code": "import os"})
