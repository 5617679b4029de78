import msgpack
import numpy as np
import pytest

from fedjax_room.errors import ConfigError, FrameTooLargeError, ProtocolError, VersionError
from fedjax_room.secagg import (
    AdvertiseKeys,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    RoundAborted,
    SecAggConfig,
    ShareBundle,
    ShareKeys,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
    decode,
    encode,
    message_from_dict,
)
from fedjax_room.secagg.messages import MAX_CLIENTS, WIRE_VERSION

D = b"d" * 32
ADV = AdvertiseKeys(D, 3, b"e" * 32, b"m" * 32, b"c" * 32, b"s" * 64)
MESSAGES = [
    ADV,
    KeyDirectory(D, (ADV, AdvertiseKeys(D, 4, b"f" * 32, b"n" * 32, b"c" * 32, b"t" * 64))),
    ShareKeys(D, 3, {4: b"x" * 102, 9: b"y" * 102}),
    ShareBundle(D, {1: b"x" * 102}),
    MaskedInput(D, 3, np.arange(5, dtype="<u4").tobytes(), b"s" * 64),
    SurvivorList(D, (1, 3, 4)),
    ConsistencySignature(D, 3, b"s" * 64),
    UnmaskRequest(D, {1: b"s" * 64, 3: b"t" * 64}),
    UnmaskShares(D, 3, {1: b"a" * 33}, {4: b"b" * 33}),
    RoundAborted(D, "too few"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_roundtrip(message):
    assert decode(encode(message)) == message
    d = message.to_dict()
    assert d["t"] == message.type and d["t"].startswith("secagg/") and d["v"] == WIRE_VERSION and d["round"] == D
    assert message_from_dict(d) == message
    assert message_from_dict(msgpack.unpackb(encode(message), strict_map_key=False)) == message


@pytest.mark.parametrize(
    "patch",
    [
        {"sender": 0},
        {"sender": 2**32},
        {"sender": "3"},
        {"enc_key": b"short"},
        {"signature": "text"},
        {"round": b"x"},
        {"t": "secagg/nope"},
        {"t": None},
        {"extra": 1},
    ],
)
def test_malformed_fields_rejected(patch):
    with pytest.raises(ProtocolError):
        message_from_dict({**ADV.to_dict(), **patch})


def test_malformed_maps_and_frames():
    good = ShareKeys(D, 3, {4: b"x" * 102}).to_dict()
    for bad in ({4: b"x" * 101}, [[4, b"x" * 102]], {4: b"x"}, {0: b"x" * 102}, {"4": b"x" * 102}, [[4]]):
        with pytest.raises(ProtocolError):
            message_from_dict({**good, "ciphertexts": bad})
    with pytest.raises(ProtocolError):
        message_from_dict({**SurvivorList(D, (1, 2)).to_dict(), "survivors": [2, 1]})
    with pytest.raises(ProtocolError):
        message_from_dict({k: v for k, v in ADV.to_dict().items() if k != "mask_key"})
    with pytest.raises(VersionError):
        message_from_dict({**ADV.to_dict(), "v": WIRE_VERSION + 1})
    with pytest.raises(VersionError):  # the envelope is checked first: an old peer is told to upgrade
        decode(msgpack.packb({"type": "secagg/advertise_keys", "v": 1, "round": D}))
    with pytest.raises(ProtocolError):
        decode(b"\xc1garbage")
    with pytest.raises(ProtocolError):
        decode(msgpack.packb([1, 2, 3]))
    with pytest.raises(ProtocolError):  # a directory may only carry adverts
        message_from_dict({**KeyDirectory(D, ()).to_dict(), "adverts": [RoundAborted(D, "x").to_dict()]})


def test_sizes_are_bounded_before_allocation():
    """A hostile peer's counts are refused from the header: a map or list of more than MAX_CLIENTS entries, a
    byte string of another length than its field's, a frame over the byte limit."""
    huge_map = ShareBundle(D, {i: b"x" * 102 for i in range(1, MAX_CLIENTS + 2)})
    huge_list = SurvivorList(D, tuple(range(1, MAX_CLIENTS + 2)))
    for message in (huge_map, huge_list):
        with pytest.raises(ProtocolError, match="length <= 65536"):
            decode(encode(message))
    header = b"\x84" + msgpack.packb("t") + msgpack.packb("secagg/survivor_list") + msgpack.packb("v")
    header += msgpack.packb(WIRE_VERSION) + msgpack.packb("round") + msgpack.packb(D) + msgpack.packb("survivors")
    with pytest.raises(ProtocolError, match="truncated"):  # claims 2^32 - 1 survivors in a few bytes
        decode(header + b"\xdd\xff\xff\xff\xff")
    with pytest.raises(FrameTooLargeError):
        decode(encode(huge_map), max_bytes=1024)


def test_config_roundtrip_and_digest(room):
    cfg = room(5, neighbours=2).config
    again = SecAggConfig.from_dict(msgpack.unpackb(msgpack.packb(cfg.to_dict()), raw=False))
    assert again.digest == cfg.digest and again.graph == cfg.graph
    assert (cfg.threshold, cfg.min_clients, cfg.holder_count) == (2, 3, 3)
    variants = [
        dict(round_id="other"),
        dict(vector_length=17),
        dict(modulus_bits=64),
        dict(threshold=3),
        dict(min_clients=4),
        dict(neighbours=None),
        dict(graph_seed=b"g" * 32),
    ]
    base = dict(
        round_id=cfg.round_id, clients=cfg.clients, vector_length=cfg.vector_length, neighbours=2, min_clients=3
    )
    digests = {SecAggConfig(**{**base, **v}).digest for v in variants}
    assert len(digests) == len(variants) and cfg.digest not in digests


def test_config_validation(room):
    cfg = room(6).config
    assert (cfg.threshold, cfg.min_clients, cfg.full_graph) == (4, 4, True)
    with pytest.raises(ConfigError, match="strict majority"):
        SecAggConfig("r", cfg.clients, 4, threshold=3)
    with pytest.raises(ConfigError):
        SecAggConfig("r", {1: cfg.clients[1]}, 4)
    with pytest.raises(ConfigError):
        SecAggConfig("r", {0: cfg.clients[1], 2: cfg.clients[2]}, 4)
    with pytest.raises(ConfigError):
        SecAggConfig("r", {1: b"short", 2: cfg.clients[2]}, 4)
    with pytest.raises(ConfigError):
        SecAggConfig("", cfg.clients, 4)
    with pytest.raises(ConfigError):
        SecAggConfig("r", cfg.clients, 0)
    with pytest.raises(ConfigError):
        SecAggConfig("r", cfg.clients, 4, min_clients=7)
    with pytest.raises(ConfigError):
        SecAggConfig.from_dict({**cfg.to_dict(), "protocol": "other/1"})
