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


def test_frame_errors_name_the_field_in_plain_words():
    body = msgpack.unpackb(m.encode(m.RunEnd(run_id="run-1", status="finished", message="done")))
    for patch, words in (
        ({"status": "Finished!"}, "field 'status' must be a lower_snake_case word"),
        ({"run_id": "run 1"}, "field 'run_id' must be a name of 1-64 ASCII letters"),
        ({"message": 7}, "field 'message' must be str, got int"),
        ({"extra": 1}, "unexpected field 'extra'"),
    ):
        with pytest.raises(ProtocolError, match=words):
            m.decode(msgpack.packb({**body, **patch}))
    with pytest.raises(ProtocolError, match="missing field 'status'"):
        m.decode(msgpack.packb({k: v for k, v in body.items() if k != "status"}))
    with pytest.raises(VersionError):  # no version at all is another version
        m.decode(msgpack.packb({k: v for k, v in body.items() if k != "v"}))


def test_messages_are_typed_structs_with_keyword_fields():
    import msgspec

    msg = m.Update(run_id="r", round=1, weight=2, payload=b"", epsilon=np.float64(0.5), ledger_epsilon=1, delta=1e-5)
    assert isinstance(msg, msgspec.Struct) and m.MESSAGE_TYPES["update"] is m.Update and msg.TYPE == "update"
    back = m.decode(m.encode(msg))  # numpy scalars travel as numbers; ints where floats are due read as floats
    assert back == msg and type(back.ledger_epsilon) is float and back.site_epsilon is None
    assert msgspec.structs.replace(back, round=2).round == 2
    with pytest.raises(TypeError):
        m.Update("r", 1, 2, b"", 0.5, 1.0, 1e-5)  # keyword only
    with pytest.raises(ProtocolError, match="not a protocol message"):
        m.encode(RunConfig())


def test_every_frame_is_scanned_before_it_is_decoded():
    ok = msgpack.packb({"v": m.VERSION, "t": "list_runs", "req": 1})
    assert m.decode(ok) == m.ListRuns(req=1)
    pairs = [msgpack.packb(x) for x in ("v", m.VERSION, "t", "list_runs", "req", 1)]
    twice = b"\x84" + b"".join(pairs) + msgpack.packb("req") + msgpack.packb(2)  # the same key again: which wins?
    with pytest.raises(ProtocolError, match="twice"):
        m.decode(twice)
    nested = {"plan": {"x": {1: "a"}}}  # int keys only where SecAgg bodies carry client ids
    with pytest.raises(ProtocolError, match="not a string"):
        m.decode(msgpack.packb({"v": m.VERSION, "t": "run_accept", "run_id": "run-1", **nested}))
    for junk in (ok + b"\x00", ok[:-1], b"\xd4\x01\x00", msgpack.packb({"v": m.VERSION, "t": "list_runs", "req": 1.5})):
        with pytest.raises(ProtocolError):
            m.decode(junk)
    claim = b"\x83" + b"".join(pairs[:4]) + msgpack.packb("spec") + b"\xdf\xff\xff\xff\xff"  # 2^32 - 1 pairs
    with pytest.raises(ProtocolError, match="truncated"):  # a count the bytes cannot hold: nothing allocated
        m.decode(claim)
    flat = {"v": m.VERSION, "t": "start_run", "req": 1, "config": {}, "spec": {"layers": [0] * codec.MAX_DECODED_ITEMS}}
    with pytest.raises(FrameTooLargeError, match=str(codec.MAX_DECODED_ITEMS)):  # refused from the list's header
        m.decode(msgpack.packb(flat))


def test_unpack_reads_what_pack_writes():
    objs = [None, True, -(2**63), 2**64 - 1, 1.5, "é" * 300, b"\x00" * 70_000, [1, [2, {"a": None}]], {"k": {"j": []}}]
    for obj in objs:
        data = codec.pack(obj)
        assert data == msgpack.packb(obj, use_bin_type=True) and codec.unpack(data) == obj
    with pytest.raises(ProtocolError):
        codec.unpack(msgpack.packb({1: 2}))  # stored blobs: string (or bytes) keys only
    with pytest.raises(ProtocolError):
        codec.unpack(b"\xa2\xff\xfe")  # not UTF-8


def test_a_release_stored_by_version_1_is_still_read():
    fields = {"run_id": "run-1", "round": 1, "weight": 4, "payload": b"p", "epsilon": 0.5, "ledger_epsilon": 0.5}
    old = msgpack.packb({"v": 1, "t": "update", **fields, "delta": 1e-5})  # v1 left out unset optional fields
    with pytest.raises(VersionError):
        m.decode(old)
    msg = m.decode(old, stored=True)
    assert msg == m.Update(**fields, delta=1e-5) and msg.v == m.VERSION
    assert m.decode(m.encode(msg)) == msg  # resent in this version's envelope
    secagg = msgpack.packb({"v": 1, "t": "secagg", "run_id": "run-1", "round": 1, "body": {}})
    with pytest.raises(VersionError):  # its body changed in version 2
        m.decode(secagg, stored=True)


def test_a_secagg_body_rides_in_the_same_envelope():
    from fedjax_room.secagg import ShareBundle, message_from_dict
    from fedjax_room.secagg.messages import WIRE_VERSION

    inner = ShareBundle(b"d" * 32, {2: b"x" * 102, 7: b"y" * 102})
    frame = m.decode(m.encode(m.SecAgg(run_id="run-1", round=1, body=inner.to_dict())))
    assert {"t", "v"} <= set(frame.body) and frame.body["t"] == inner.type and frame.body["v"] == WIRE_VERSION
    assert message_from_dict(frame.body) == inner  # integer client ids survive the frame's scan
    raw = msgpack.unpackb(m.encode(frame), strict_map_key=False)
    assert {"t", "v"} <= set(raw) and raw["t"] == "secagg" and raw["v"] == m.VERSION

    def packed_map(pairs: list[tuple[str, bytes]]) -> bytes:  # values already packed: duplicates are possible
        return bytes([0x80 | len(pairs)]) + b"".join(msgpack.packb(k) + v for k, v in pairs)

    twice = b"\x82" + msgpack.packb(2) + msgpack.packb(b"x" * 102) + msgpack.packb(2) + msgpack.packb(b"y" * 102)
    body = packed_map([(k, msgpack.packb(inner.to_dict()[k])) for k in ("t", "v", "round")] + [("ciphertexts", twice)])
    head = [("t", msgpack.packb("secagg")), ("v", msgpack.packb(m.VERSION)), ("run_id", msgpack.packb("run-1"))]
    with pytest.raises(ProtocolError, match="twice"):  # which copy would a reader see? neither: refused
        m.decode(packed_map([*head, ("round", msgpack.packb(1)), ("body", body)]))
