"""The public parameters of one secure-aggregation round, agreed by the server and every client.

A :class:`SecAggConfig` is made by the coordinator when it opens a round and sent to every site, which
checks it (its own id and key are in it, the threshold is one it accepts) before taking part. Every
signature and every AEAD in the round is bound to :attr:`SecAggConfig.digest`, the SHA-256 of the
canonical msgpack encoding of the whole config, so a server that shows different configs (say different
thresholds or rosters) to different clients gets nothing that verifies.

Thresholds. Each client's two secrets are Shamir-shared among its *holders*: itself and its neighbours
(everybody in the original protocol, ``k`` random neighbours under SecAgg+). ``threshold`` is the
number of holders' shares needed to rebuild a secret; it must be a strict majority of the holders
(``2 * threshold > holders``), which is what stops a server from collecting, for one client, both the
self-mask seed (from those it told the client survived) and the masking key (from those it told the
client dropped). ``min_clients`` is the fewest clients allowed to continue at any stage: the sum of
fewer inputs is never released. Defaults: ``threshold = holders // 2 + 1``; ``min_clients =
threshold`` for the full graph, ``max(threshold, n // 2 + 1)`` under SecAgg+.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import msgpack

from fedjax_room.errors import ConfigError
from fedjax_room.secagg.encoding import check_modulus_bits
from fedjax_room.secagg.masking import neighbour_graph

__all__ = ["PROTOCOL", "SecAggConfig"]

PROTOCOL = "fedjax-room/secagg/1"
_MAX_ID = 2**32


@dataclass(frozen=True, eq=False, init=False)
class SecAggConfig:
    """Parameters of one round.

    Args:
        round_id: a unique name for the round (e.g. ``"<run id>/<round>"``); never reuse one.
        clients: ``{client id: raw 32-byte Ed25519 identity public key}``; ids are Shamir x-coordinates,
            integers in ``[1, 2**32)``. The room maps its site names to ids.
        vector_length: number of ring elements in each input.
        modulus_bits: inputs are summed modulo ``2**modulus_bits`` (32 -> uint32, up to 64 -> uint64).
        threshold: shares needed to rebuild a secret (default: a majority of the holders).
        min_clients: the fewest clients that may continue at any stage (see the module docstring).
        neighbours: ``None`` for the original protocol (everyone masks with everyone); an integer ``k``
            for SecAgg+ (a random ``k``-regular graph; see :func:`~fedjax_room.secagg.masking.default_neighbours`).
        graph_seed: public randomness for the SecAgg+ graph; default: SHA-256 of the round id.

    The attributes hold the resolved values: ``threshold``, ``min_clients`` and ``graph_seed`` are never None.
    """

    round_id: str
    clients: Mapping[int, bytes]
    vector_length: int
    modulus_bits: int
    threshold: int
    min_clients: int
    neighbours: int | None
    graph_seed: bytes

    def __init__(
        self,
        round_id: str,
        clients: Mapping[int, bytes],
        vector_length: int,
        modulus_bits: int = 32,
        threshold: int | None = None,
        min_clients: int | None = None,
        neighbours: int | None = None,
        graph_seed: bytes | None = None,
    ) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(round_id, str) or not round_id:
            raise ConfigError("round_id must be a non-empty string, unique to this round")
        put("round_id", round_id)
        checked = dict(clients)
        if len(checked) < 2:
            raise ConfigError("secure aggregation needs at least 2 clients (3 or more to hide anything)")
        for cid, key in checked.items():
            if not isinstance(cid, int) or isinstance(cid, bool) or not 0 < cid < _MAX_ID:
                raise ConfigError(f"client ids must be integers in [1, 2^32), got {cid!r}")
            if not isinstance(key, bytes) or len(key) != 32:
                raise ConfigError(f"client {cid}: identity key must be the raw 32-byte Ed25519 public key")
        put("clients", {cid: checked[cid] for cid in sorted(checked)})
        if not isinstance(vector_length, int) or vector_length < 1:
            raise ConfigError(f"vector_length must be a positive integer, got {vector_length!r}")
        put("vector_length", vector_length)
        check_modulus_bits(modulus_bits)
        put("modulus_bits", modulus_bits)
        n = len(checked)
        if neighbours is not None and (not isinstance(neighbours, int) or neighbours < 1):
            raise ConfigError(f"neighbours must be None (full graph) or a positive integer, got {neighbours!r}")
        put("neighbours", neighbours)
        seed = graph_seed if graph_seed is not None else hashlib.sha256(round_id.encode()).digest()
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise ConfigError("graph_seed must be 32 bytes")
        put("graph_seed", seed)
        holders = self.holder_count
        resolved = holders // 2 + 1 if threshold is None else threshold
        if not isinstance(resolved, int) or not holders // 2 + 1 <= resolved <= holders:
            raise ConfigError(
                f"threshold {resolved!r} must be a strict majority of the {holders} holders of each secret, "
                f"i.e. in [{holders // 2 + 1}, {holders}]; a smaller one would let a lying server unmask a client"
            )
        put("threshold", resolved)
        if min_clients is None:
            least = resolved if self.full_graph else max(resolved, n // 2 + 1)
        else:
            least = min_clients
        if not isinstance(least, int) or not 2 <= least <= n:
            raise ConfigError(f"min_clients must be in [2, {n}], got {least!r}")
        put("min_clients", least)

    @property
    def ids(self) -> tuple[int, ...]:
        """The client ids, sorted."""
        return tuple(self.clients)

    @property
    def n(self) -> int:
        return len(self.clients)

    @property
    def full_graph(self) -> bool:
        """True when every client masks with every other (no SecAgg+ sparsification)."""
        return all(len(v) == self.n - 1 for v in self.graph.values())

    @cached_property
    def graph(self) -> dict[int, frozenset[int]]:
        """``{id: neighbours}``: those it masks with and shares its secrets with."""
        return neighbour_graph(self.ids, self.neighbours, self.graph_seed)

    @property
    def holder_count(self) -> int:
        """How many clients hold a share of each secret (its neighbours and itself)."""
        return min(len(v) for v in self.graph.values()) + 1

    def holders(self, cid: int) -> frozenset[int]:
        """The clients holding shares of ``cid``'s secrets: its neighbours and itself."""
        return self.graph[cid] | {cid}

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-able dict (bytes, ints, str); :meth:`from_dict` inverts it."""
        return {
            "protocol": PROTOCOL,
            "round_id": self.round_id,
            "clients": [[cid, key] for cid, key in self.clients.items()],
            "vector_length": self.vector_length,
            "modulus_bits": self.modulus_bits,
            "threshold": self.threshold,
            "min_clients": self.min_clients,
            "neighbours": self.neighbours,
            "graph_seed": self.graph_seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SecAggConfig:
        if data.get("protocol") != PROTOCOL:
            raise ConfigError(f"unsupported secure-aggregation protocol {data.get('protocol')!r}; expected {PROTOCOL}")
        try:
            clients = {int(cid): bytes(key) for cid, key in data["clients"]}
            return cls(
                round_id=data["round_id"],
                clients=clients,
                vector_length=data["vector_length"],
                modulus_bits=data["modulus_bits"],
                threshold=data["threshold"],
                min_clients=data["min_clients"],
                neighbours=data["neighbours"],
                graph_seed=data["graph_seed"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad secure-aggregation config: {exc!r}") from None

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding; binds every signature and ciphertext of the round."""
        d = self.to_dict()
        canonical = [d[k] for k in sorted(d)]
        return hashlib.sha256(msgpack.packb(canonical, use_bin_type=True)).digest()
