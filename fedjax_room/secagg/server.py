"""The server (coordinator) side of one secure-aggregation round, as a sans-I/O state machine.

::

    server = SecAggServer(config, stage_timeout=30.0, now=clock())
    on every client message:   deliver(server.receive(message, now=clock()))
    on a timer:                deliver(server.tick(now=clock()))
    on a lost connection:      deliver(server.drop(client_id, now=clock()))
    when server.state is ServerState.DONE:      total = server.result()   # the sum mod 2**bits
                                                server.survivors          # whose inputs are in it

``receive``, ``tick`` and ``drop`` return :class:`Envelope` s (recipient id, message). A stage closes when
every client still expected has answered, or at its deadline (``stage_timeout`` seconds after it opened;
enforced by ``tick`` and ``receive``); the clients that did not answer are dropouts from then on.

Stages: ADVERTISE (collect :class:`AdvertiseKeys`, U1) -> SHARE (:class:`ShareKeys`, U2) -> COLLECT
(:class:`MaskedInput`, U3; the masked vectors are added into one running sum on arrival) -> CONSISTENCY
(:class:`ConsistencySignature`, U4) -> UNMASK (:class:`UnmaskShares`, U5) -> DONE. At each close the server
checks that at least ``min_clients`` clients remain and that every secret it will need can still be
rebuilt from ``threshold`` live holders; if not, it moves to ABORTED, sends :class:`RoundAborted` to the
live clients, and :meth:`SecAggServer.result` raises :class:`~fedjax_room.errors.RoundError`: nothing is
released.

Messages are checked on arrival. One that is malformed, from an unknown client, duplicated, or from a
*future* stage raises :class:`~fedjax_room.errors.ProtocolError`; one with a bad signature raises
:class:`~fedjax_room.errors.BadSignatureError`. Either way the message is dropped and the round goes
on (the sender just counts as a dropout if it never sends a good one). A message for a stage that has
already closed is a late dropout: it is recorded in :attr:`SecAggServer.ignored` and not raised.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from fedjax_room.errors import CryptoError, FedRoomError, ProtocolError, RoundError
from fedjax_room.secagg import channels
from fedjax_room.secagg.config import SecAggConfig
from fedjax_room.secagg.encoding import ring_dtype, ring_mask
from fedjax_room.secagg.masking import (
    add_mask,
    pairwise_seed,
    pairwise_sign,
    x25519_private_from_bytes,
    x25519_public_bytes,
)
from fedjax_room.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    Envelope,
    KeyDirectory,
    MaskedInput,
    Message,
    RoundAborted,
    ShareBundle,
    ShareKeys,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
)
from fedjax_room.secagg.shamir import combine_bytes

__all__ = ["SecAggServer", "ServerState"]


class ServerState(StrEnum):
    """The stage the server is collecting (or the end state)."""

    ADVERTISE = "advertise"
    SHARE = "share"
    COLLECT = "collect"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


_ORDER = [ServerState.ADVERTISE, ServerState.SHARE, ServerState.COLLECT, ServerState.CONSISTENCY, ServerState.UNMASK]
#: What a client sends the server.
_ClientMessage = AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature | UnmaskShares

_STAGE_OF: dict[type[Message], ServerState] = {
    AdvertiseKeys: ServerState.ADVERTISE,
    ShareKeys: ServerState.SHARE,
    MaskedInput: ServerState.COLLECT,
    ConsistencySignature: ServerState.CONSISTENCY,
    UnmaskShares: ServerState.UNMASK,
}


class SecAggServer:
    """The server's side of one round (see the module docstring).

    Args:
        config: the round's public parameters, as sent to the clients.
        stage_timeout: seconds each stage waits for stragglers; ``None`` waits until every expected
            client answers, :meth:`drop` is called, or :meth:`close_stage` forces it.
        now: the current time (any monotonic clock, in seconds), to start the first deadline.
    """

    def __init__(self, config: SecAggConfig, *, stage_timeout: float | None = None, now: float = 0.0) -> None:
        self.config = config
        self._digest = config.digest
        self._timeout = stage_timeout
        self._state = ServerState.ADVERTISE
        self._deadline = None if stage_timeout is None else now + stage_timeout
        self._expected: frozenset[int] = frozenset(config.ids)
        self._dropped: set[int] = set()
        self._adverts: dict[int, AdvertiseKeys] = {}
        self._shares: dict[int, ShareKeys] = {}
        self._inputs: set[int] = set()
        self._signatures: dict[int, bytes] = {}
        self._unmask: dict[int, UnmaskShares] = {}
        self._sets: dict[str, frozenset[int]] = {}
        self._sum = np.zeros(config.vector_length, dtype=ring_dtype(config.modulus_bits))
        self._result: np.ndarray | None = None
        self._error: FedRoomError | None = None
        self.ignored: list[tuple[int, str, str]] = []
        """Late messages that were not used: ``(sender, message type, why)``."""

    # ------------------------------------------------------------ public API

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def deadline(self) -> float | None:
        """When the open stage closes on its own (``None``: no deadline, or the round is over)."""
        return self._deadline if self._state in _ORDER else None

    @property
    def survivors(self) -> tuple[int, ...]:
        """U3: the clients whose inputs are in the sum (known once masked-input collection closed)."""
        return tuple(sorted(self._sets.get("U3", ())))

    @property
    def participants(self) -> dict[str, tuple[int, ...]]:
        """The sets fixed so far: U1 advertised, U2 shared keys, U3 sent inputs, U4 signed, U5 unmasked."""
        return {k: tuple(sorted(v)) for k, v in self._sets.items()}

    @property
    def error(self) -> FedRoomError | None:
        """Why the round aborted, if it did."""
        return self._error

    def result(self) -> np.ndarray:
        """The unmasked sum of the survivors' inputs, mod ``2**modulus_bits`` (a ring vector).

        Raises:
            RoundError: the round aborted (too few clients) or is not finished; nothing is released.
            CryptoError: a reconstructed secret did not match its commitment (a client sent bad shares).
        """
        if self._state is ServerState.ABORTED:
            assert self._error is not None
            raise self._error
        if self._result is None:
            raise RoundError(f"the secure-aggregation round is not finished (stage {self._state.value})")
        return self._result.copy()

    def receive(self, message: Message, now: float | None = None) -> list[Envelope]:
        """Take one client message; returns what to send (when it closes a stage)."""
        out = self.tick(now) if now is not None else []
        stage = _STAGE_OF.get(type(message))
        if stage is None or not isinstance(message, _ClientMessage):
            raise ProtocolError(f"the server does not accept {type(message).__name__} messages")
        if message.round != self._digest:
            raise ProtocolError("message is for another secure-aggregation round (config digest differs)")
        sender = message.sender
        if sender not in self.config.clients:
            raise ProtocolError(f"client {sender} is not in this round")
        if self._state not in _ORDER or _ORDER.index(stage) < _ORDER.index(self._state) or sender in self._dropped:
            self.ignored.append((sender, type(message).__name__, f"arrived in stage {self._state.value}"))
            return out
        if stage is not self._state:
            raise ProtocolError(
                f"client {sender} sent {type(message).__name__} while the server is in stage {self._state.value}"
            )
        if sender not in self._expected:
            raise ProtocolError(f"client {sender} is not part of stage {self._state.value} (it dropped out earlier)")
        match message:  # the stage of each type is _STAGE_OF's
            case AdvertiseKeys():
                self._on_advert(message)
            case ShareKeys():
                self._on_share_keys(message)
            case MaskedInput():
                self._on_masked_input(message)
            case ConsistencySignature():
                self._on_signature(message)
            case UnmaskShares():
                self._on_unmask_shares(message)
        if self._answered() >= self._expected - self._dropped:
            out += self._close_stage(now)
        return out

    def tick(self, now: float) -> list[Envelope]:
        """Close the open stage if its deadline has passed."""
        if self._state in _ORDER and self._deadline is not None and now >= self._deadline:
            return self._close_stage(now)
        return []

    def drop(self, client_id: int, now: float | None = None) -> list[Envelope]:
        """Count a client as gone (its connection closed); closes the stage if it was the last one awaited."""
        if client_id not in self.config.clients:
            raise ProtocolError(f"client {client_id} is not in this round")
        self._dropped.add(client_id)
        if self._state in _ORDER and self._answered() >= self._expected - self._dropped:
            return self._close_stage(now)
        return []

    def close_stage(self, now: float | None = None) -> list[Envelope]:
        """Close the open stage now, with whoever has answered."""
        if self._state not in _ORDER:
            raise ProtocolError(f"no stage is open (the round is {self._state.value})")
        return self._close_stage(now)

    # ------------------------------------------------------------ message checks

    def _answered(self) -> set[int]:
        return {
            ServerState.ADVERTISE: set(self._adverts),
            ServerState.SHARE: set(self._shares),
            ServerState.COLLECT: self._inputs,
            ServerState.CONSISTENCY: set(self._signatures),
            ServerState.UNMASK: set(self._unmask),
        }[self._state]

    def _duplicate(self, sender: int) -> None:
        if sender in self._answered():
            raise ProtocolError(f"client {sender} already sent its {self._state.value} message")

    def _on_advert(self, msg: AdvertiseKeys) -> None:
        self._duplicate(msg.sender)
        channels.verify_signature(
            self.config.clients[msg.sender],
            msg.signature,
            channels.advert_transcript(self._digest, msg.sender, msg.enc_key, msg.mask_key, msg.seed_commitment),
        )
        self._adverts[msg.sender] = msg

    def _on_share_keys(self, msg: ShareKeys) -> None:
        self._duplicate(msg.sender)
        wanted = self.config.graph[msg.sender] & self._sets["U1"]
        if set(msg.ciphertexts) != wanted:
            raise ProtocolError(
                f"client {msg.sender} sent shares for {sorted(msg.ciphertexts)}; expected exactly {sorted(wanted)}"
            )
        self._shares[msg.sender] = msg

    def _on_masked_input(self, msg: MaskedInput) -> None:
        self._duplicate(msg.sender)
        dtype = self._sum.dtype
        if len(msg.data) != self.config.vector_length * dtype.itemsize:
            raise ProtocolError(
                f"client {msg.sender}'s masked input is {len(msg.data)} bytes; expected "
                f"{self.config.vector_length} x {dtype.itemsize}"
            )
        transcript = channels.input_transcript(self._digest, msg.sender, msg.data)
        channels.verify_signature(self.config.clients[msg.sender], msg.signature, transcript)
        np.add(self._sum, np.frombuffer(msg.data, dtype=dtype), out=self._sum)
        self._inputs.add(msg.sender)

    def _on_signature(self, msg: ConsistencySignature) -> None:
        self._duplicate(msg.sender)
        transcript = channels.survivors_transcript(self._digest, sorted(self._sets["U3"]))
        channels.verify_signature(self.config.clients[msg.sender], msg.signature, transcript)
        self._signatures[msg.sender] = msg.signature

    def _on_unmask_shares(self, msg: UnmaskShares) -> None:
        self._duplicate(msg.sender)
        u2, u3 = self._sets["U2"], self._sets["U3"]
        holds = self.config.holders(msg.sender) & u2
        want_seed, want_key = holds & u3, holds - u3
        if set(msg.seed_shares) != want_seed or set(msg.key_shares) != want_key:
            raise ProtocolError(
                f"client {msg.sender} revealed seed shares for {sorted(msg.seed_shares)} and key shares for "
                f"{sorted(msg.key_shares)}; expected {sorted(want_seed)} and {sorted(want_key)}"
            )
        self._unmask[msg.sender] = msg

    # ------------------------------------------------------------ stage transitions

    def _close_stage(self, now: float | None = None) -> list[Envelope]:
        state = self._state
        live = frozenset(self._answered())  # a client that answered and then left still counts for this stage
        name = {
            ServerState.ADVERTISE: "U1",
            ServerState.SHARE: "U2",
            ServerState.COLLECT: "U3",
            ServerState.CONSISTENCY: "U4",
            ServerState.UNMASK: "U5",
        }[state]
        self._sets[name] = live
        problem = self._feasibility(live)
        if problem:
            return self._abort(f"stage {state.value} closed with {len(live)} clients: {problem}", live)
        if state is ServerState.UNMASK:
            try:
                self._finish()
            except CryptoError as exc:
                return self._abort(exc.message, live, error=exc)
            self._state = ServerState.DONE
            return []
        self._state = _ORDER[_ORDER.index(state) + 1]
        self._expected = live
        if self._timeout is not None and now is not None:
            self._deadline = now + self._timeout
        elif self._timeout is not None and self._deadline is not None:
            self._deadline = self._deadline + self._timeout
        return self._broadcast(state, live)

    def _feasibility(self, live: frozenset[int]) -> str | None:
        """Why the round cannot finish with ``live`` (the clients still in), or None."""
        cfg = self.config
        if len(live) < cfg.min_clients:
            return f"at least {cfg.min_clients} are needed"
        t = cfg.threshold
        for cid in sorted(self._sets.get("U3", live)):  # once inputs are in, every survivor's seed is needed
            if len(cfg.holders(cid) & live) < t:
                return f"fewer than {t} holders of client {cid}'s shares are left"
        if "U3" in self._sets:  # from then on, the masking keys of clients who dropped after sharing
            for cid in sorted(self._sets["U2"] - self._sets["U3"]):
                holders = cfg.graph[cid] & live
                if cfg.graph[cid] & self._sets["U3"] and len(holders) < t:
                    return f"fewer than {t} holders of dropped client {cid}'s shares are left"
        return None

    def _broadcast(self, closed: ServerState, live: frozenset[int]) -> list[Envelope]:
        d, graph = self._digest, self.config.graph
        recipients = sorted(live - self._dropped)  # a client that left after answering still counts, unsent
        if closed is ServerState.ADVERTISE:
            return [
                Envelope(i, KeyDirectory(d, tuple(self._adverts[j] for j in sorted(graph[i] & live))))
                for i in recipients
            ]
        if closed is ServerState.SHARE:
            return [
                Envelope(i, ShareBundle(d, {j: self._shares[j].ciphertexts[i] for j in sorted(graph[i] & live)}))
                for i in recipients
            ]
        if closed is ServerState.COLLECT:
            survivors = SurvivorList(d, tuple(sorted(live)))
            return [Envelope(i, survivors) for i in recipients]
        request = UnmaskRequest(d, {j: self._signatures[j] for j in sorted(live)})
        return [Envelope(i, request) for i in recipients]

    def _abort(self, reason: str, live: frozenset[int], error: FedRoomError | None = None) -> list[Envelope]:
        self._state = ServerState.ABORTED
        self._error = error or RoundError(f"secure aggregation aborted, nothing was released: {reason}")
        self._sum[:] = 0
        message = RoundAborted(self._digest, self._error.message)
        return [Envelope(i, message) for i in sorted(self._expected - self._dropped)]

    def _finish(self) -> None:
        cfg, bits, t = self.config, self.config.modulus_bits, self.config.threshold
        u2, u3, u5 = self._sets["U2"], self._sets["U3"], self._sets["U5"]
        total = self._sum
        for owner in sorted(u3):
            shares = {h: self._unmask[h].seed_shares[owner] for h in sorted(cfg.holders(owner) & u5)}
            seed = combine_bytes(shares, t)
            if channels.seed_commitment(self._digest, owner, seed) != self._adverts[owner].seed_commitment:
                raise CryptoError(
                    f"the self-mask seed rebuilt for client {owner} does not match its commitment: a holder sent a "
                    "bad share; the round is aborted"
                )
            add_mask(total, seed, -1, bits)
        for gone in sorted(u2 - u3):
            masked_with = cfg.graph[gone] & u3
            if not masked_with:
                continue
            shares = {h: self._unmask[h].key_shares[gone] for h in sorted(cfg.graph[gone] & u5)}
            key = x25519_private_from_bytes(combine_bytes(shares, t))
            if x25519_public_bytes(key) != self._adverts[gone].mask_key:
                raise CryptoError(
                    f"the masking key rebuilt for dropped client {gone} does not match its advertised key: a holder "
                    "sent a bad share; the round is aborted"
                )
            for peer in sorted(masked_with):
                seed = pairwise_seed(key, self._adverts[peer].mask_key, context=self._digest, me=gone, peer=peer)
                add_mask(total, seed, -pairwise_sign(peer, gone), bits)
        mask = ring_mask(bits)
        if mask is not None:
            np.bitwise_and(total, total.dtype.type(mask), out=total)
        self._result = total
