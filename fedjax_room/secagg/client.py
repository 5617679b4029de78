"""The client (site) side of one secure-aggregation round, as a sans-I/O state machine.

::

    client = SecAggClient(config, my_id, identity_key)
    send(client.advertise())                      # stage 0
    for msg in incoming:                          # KeyDirectory, ShareBundle, SurvivorList, UnmaskRequest,
        for reply in client.receive(msg):         # RoundAborted -- whatever the server sends
            send(reply)
    send_all(client.set_input(encoded_update))    # any time before stage 2; returns [] or [MaskedInput]

Each call returns the messages to send to the server. A call in the wrong state raises
:class:`~fedjax_room.errors.ProtocolError`. Anything that shows the server or a peer misbehaving
(a bad signature, a ciphertext that does not authenticate, a survivor list that contradicts what the
client saw, too few live peers) raises the matching error *and aborts the client*: it drops its secrets
and will not answer again, so nothing more about its input is released.

The one rule that protects the input: for any peer, the client reveals either its share of the peer's
self-mask seed (the peer survived) or its share of the peer's masking key (the peer dropped), never both;
it answers exactly one unmask request, and only after checking that at least ``min_clients`` clients
signed the same survivor list it was given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from enum import StrEnum
from functools import partial

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedjax_room.errors import BadSignatureError, ConfigError, CryptoError, FedRoomError, ProtocolError, RoundError
from fedjax_room.identity import public_key_bytes
from fedjax_room.secagg import channels
from fedjax_room.secagg.config import SecAggConfig
from fedjax_room.secagg.encoding import ring_dtype
from fedjax_room.secagg.masking import (
    add_mask,
    generate_keypair,
    pairwise_seed,
    pairwise_sign,
    x25519_private_bytes,
    x25519_public_bytes,
)
from fedjax_room.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
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
from fedjax_room.secagg.shamir import split_bytes

__all__ = ["ClientState", "SecAggClient"]


class ClientState(StrEnum):
    """Where a client is in the round."""

    NEW = "new"  # advertise() not called yet
    AWAIT_KEYS = "await_keys"  # sent AdvertiseKeys
    AWAIT_SHARES = "await_shares"  # sent ShareKeys
    READY = "ready"  # holds its peers' shares; sends MaskedInput as soon as it has an input
    AWAIT_SURVIVORS = "await_survivors"  # sent MaskedInput
    AWAIT_UNMASK = "await_unmask"  # sent ConsistencySignature
    DONE = "done"  # sent UnmaskShares
    ABORTED = "aborted"


class SecAggClient:
    """One client's side of one round (see the module docstring).

    Args:
        config: the round's public parameters (check them against your policy before joining).
        client_id: this client's id in ``config.clients``.
        identity_key: this client's Ed25519 identity key; its public half must be the one in the config.
    """

    def __init__(self, config: SecAggConfig, client_id: int, identity_key: Ed25519PrivateKey) -> None:
        if client_id not in config.clients:
            raise ConfigError(f"client {client_id} is not in this round's roster")
        if public_key_bytes(identity_key) != config.clients[client_id]:
            raise ConfigError(f"the identity key given for client {client_id} is not the one enrolled in the round")
        self.config = config
        self.id = client_id
        self._identity = identity_key
        self._digest = config.digest
        self._enc = generate_keypair()
        self._mask = generate_keypair()
        self._seed: bytes | None = os.urandom(32)
        self._state = ClientState.NEW
        self._input: np.ndarray | None = None
        self._extra: Callable[[frozenset[int], Mapping[int, bytes]], np.ndarray] | None = None
        self._peers: dict[int, AdvertiseKeys] = {}
        self._held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (seed share, key share)
        self._enc_shared: dict[int, bytes] = {}  # peer -> X25519 secret for share sealing
        self._alive: frozenset[int] = frozenset()  # my holders still in the round (incl. me)
        self._survivors: tuple[int, ...] = ()
        self.abort_reason: str | None = None

    # ------------------------------------------------------------ public API

    @property
    def state(self) -> ClientState:
        return self._state

    def advertise(self) -> AdvertiseKeys:
        """Stage 0: the signed advertisement of this client's two X25519 public keys."""
        self._expect(ClientState.NEW, "advertise")
        enc_key, mask_key = x25519_public_bytes(self._enc), x25519_public_bytes(self._mask)
        commitment = channels.seed_commitment(self._digest, self.id, self._require_seed())
        signature = channels.sign(
            self._identity, channels.advert_transcript(self._digest, self.id, enc_key, mask_key, commitment)
        )
        self._state = ClientState.AWAIT_KEYS
        return AdvertiseKeys(self._digest, self.id, enc_key, mask_key, commitment, signature)

    def set_input(
        self,
        vector: np.ndarray,
        *,
        extra: Callable[[frozenset[int], Mapping[int, bytes]], np.ndarray] | None = None,
    ) -> list[Message]:
        """Give the encoded input (a ring vector of ``config.vector_length``); returns ``[MaskedInput]`` if
        the key-sharing stage is done, else ``[]`` (it is sent on :class:`ShareBundle`).

        ``extra``, when given, is called once just before masking with the clients still in the round (this one
        included) and this client's channel secret with each peer (never known to the server); the ring vector
        it returns is added to the input (the distributed-noise rounds' pairwise terms,
        :meth:`fedjax_room.secagg.record_noise.RecordNoise.pairwise_terms`)."""
        if self._state not in (ClientState.NEW, ClientState.AWAIT_KEYS, ClientState.AWAIT_SHARES, ClientState.READY):
            raise ProtocolError(f"cannot take an input in state {self._state.value}: the input stage is over")
        if self._input is not None:
            raise ProtocolError("this client already has its input for the round")
        dtype = ring_dtype(self.config.modulus_bits)
        vector = np.asarray(vector)
        if vector.dtype != dtype or vector.shape != (self.config.vector_length,):
            raise ConfigError(
                f"the input must be a {dtype} vector of length {self.config.vector_length} "
                f"(encode it with FixedPointCodec or the ddp mechanism), got {vector.dtype} {vector.shape}"
            )
        self._input = vector.copy()
        self._extra = extra
        if self._state is ClientState.READY:
            return self._guard(self._masked_input)
        return []

    def receive(self, message: Message) -> list[Message]:
        """Handle one server message; returns the messages to send back (possibly none)."""
        if message.round != self._digest:
            raise ProtocolError("message is for another secure-aggregation round (config digest differs)")
        if isinstance(message, RoundAborted):
            if self._state is not ClientState.ABORTED:
                self._abort(f"server aborted the round: {message.reason}")
            return []
        state: ClientState
        step: Callable[[], list[Message]]
        match message:
            case KeyDirectory():
                state, step = ClientState.AWAIT_KEYS, partial(self._on_keys, message)
            case ShareBundle():
                state, step = ClientState.AWAIT_SHARES, partial(self._on_shares, message)
            case SurvivorList():
                state, step = ClientState.AWAIT_SURVIVORS, partial(self._on_survivors, message)
            case UnmaskRequest():
                state, step = ClientState.AWAIT_UNMASK, partial(self._on_unmask, message)
            case _:
                raise ProtocolError(f"a client does not accept {type(message).__name__} messages")
        self._expect(state, type(message).__name__)  # refused, but the round goes on
        return self._guard(step)  # any failure from here on aborts the client

    def abort(self, reason: str) -> None:
        """Leave the round (e.g. on a local timeout): drop every secret; answer nothing more."""
        self._abort(reason)

    # ------------------------------------------------------------ stages

    def _on_keys(self, msg: KeyDirectory) -> list[Message]:
        cfg, me = self.config, self.id
        neighbours = cfg.graph[me]
        peers: dict[int, AdvertiseKeys] = {}
        for advert in msg.adverts:
            if advert.round != self._digest:
                raise ProtocolError(f"the advert of client {advert.sender} is for another round")
            if advert.sender not in neighbours:
                raise ProtocolError(f"the server sent keys of client {advert.sender}, which is not my neighbour")
            if advert.sender in peers:
                raise ProtocolError(f"the server sent the keys of client {advert.sender} twice")
            channels.verify_signature(
                cfg.clients[advert.sender],
                advert.signature,
                channels.advert_transcript(
                    self._digest, advert.sender, advert.enc_key, advert.mask_key, advert.seed_commitment
                ),
            )
            peers[advert.sender] = advert
        keys = [x25519_public_bytes(self._enc), x25519_public_bytes(self._mask)]
        keys += [k for a in peers.values() for k in (a.enc_key, a.mask_key)]
        if len(set(keys)) != len(keys):
            raise CryptoError("two advertised X25519 keys are equal: keys were replayed; abort the round")
        alive = frozenset(peers) | {me}
        self._check_alive(alive, "advertised keys")
        holders = sorted(alive)
        seed_shares = split_bytes(self._require_seed(), cfg.threshold, holders)
        key_shares = split_bytes(x25519_private_bytes(self._mask), cfg.threshold, holders)
        self._held = {me: (seed_shares[me], key_shares[me])}
        self._enc_shared = {j: channels.enc_shared_secret(self._enc, peers[j].enc_key) for j in peers}
        ciphertexts = {
            j: channels.seal_shares(self._enc_shared[j], self._digest, me, j, seed_shares[j], key_shares[j])
            for j in holders
            if j != me
        }
        self._peers = peers
        self._alive = alive
        self._state = ClientState.AWAIT_SHARES
        return [ShareKeys(self._digest, me, ciphertexts)]

    def _on_shares(self, msg: ShareBundle) -> list[Message]:
        me = self.id
        for sender, ciphertext in sorted(msg.ciphertexts.items()):
            if sender not in self._peers:
                raise ProtocolError(f"the server forwarded shares from client {sender}, which did not advertise to me")
            self._held[sender] = channels.open_shares(self._enc_shared[sender], self._digest, sender, me, ciphertext)
        alive = frozenset(msg.ciphertexts) | {me}
        self._check_alive(alive, "shared keys")
        self._alive = alive
        self._state = ClientState.READY
        if self._input is None:
            return []
        return self._masked_input()

    def _masked_input(self) -> list[Message]:
        cfg, me = self.config, self.id
        assert self._input is not None
        y = self._input
        self._input = None
        if self._extra is not None:
            extra = np.asarray(self._extra(self._alive, dict(self._enc_shared)))
            self._extra = None
            if extra.dtype != y.dtype or extra.shape != y.shape:
                raise ConfigError(f"the extra input must be a {y.dtype} vector like the input, got {extra.dtype}")
            y = y + extra  # modulo 2^bits: the dtype's width wraps, and narrower rings are cut below
            if cfg.modulus_bits < 8 * y.dtype.itemsize:
                y &= y.dtype.type((1 << cfg.modulus_bits) - 1)
        add_mask(y, self._require_seed(), 1, cfg.modulus_bits)
        for peer in sorted(self._alive - {me}):
            seed = pairwise_seed(self._mask, self._peers[peer].mask_key, context=self._digest, me=me, peer=peer)
            add_mask(y, seed, pairwise_sign(me, peer), cfg.modulus_bits)
        data = y.tobytes()
        signature = channels.sign(self._identity, channels.input_transcript(self._digest, me, data))
        self._state = ClientState.AWAIT_SURVIVORS
        return [MaskedInput(self._digest, me, data, signature)]

    def _on_survivors(self, msg: SurvivorList) -> list[Message]:
        cfg, me = self.config, self.id
        survivors = frozenset(msg.survivors)
        if not survivors <= set(cfg.ids):
            raise ProtocolError("the survivor list names clients that are not in the round")
        if me not in survivors:
            raise ProtocolError(f"the server's survivor list omits client {me}, which sent its masked input")
        lying = (survivors & cfg.holders(me)) - self._alive
        if lying:
            raise ProtocolError(
                f"the server lists {sorted(lying)} as survivors, but they never shared keys with client {me}"
            )
        if len(survivors) < cfg.min_clients:
            raise RoundError(
                f"only {len(survivors)} clients sent masked inputs; the round needs {cfg.min_clients}: aborting"
            )
        if len(survivors & cfg.holders(me)) < cfg.threshold:
            raise RoundError(f"fewer than {cfg.threshold} of client {me}'s share holders survived: aborting")
        self._survivors = tuple(sorted(survivors))
        signature = channels.sign(self._identity, channels.survivors_transcript(self._digest, self._survivors))
        self._state = ClientState.AWAIT_UNMASK
        return [ConsistencySignature(self._digest, me, signature)]

    def _on_unmask(self, msg: UnmaskRequest) -> list[Message]:
        cfg, me = self.config, self.id
        signers = frozenset(msg.signatures)
        survivors = frozenset(self._survivors)
        if not signers <= survivors:
            raise ProtocolError(
                f"clients {sorted(signers - survivors)} signed the survivor list but are not on it: "
                "the server is inconsistent about who dropped out"
            )
        if me not in signers:
            raise ProtocolError(f"the unmask request lacks client {me}'s own consistency signature")
        if len(signers) < cfg.min_clients or len(signers & cfg.holders(me)) < cfg.threshold:
            raise RoundError(
                f"only {len(signers)} clients confirmed the survivor list (need {cfg.min_clients} in all and "
                f"{cfg.threshold} of client {me}'s share holders): aborting without revealing shares"
            )
        transcript = channels.survivors_transcript(self._digest, self._survivors)
        for signer in sorted(signers):
            try:
                channels.verify_signature(cfg.clients[signer], msg.signatures[signer], transcript)
            except BadSignatureError:
                raise BadSignatureError(
                    f"client {signer}'s consistency signature is not over the survivor list client {me} was "
                    "given: the server told clients different stories about who dropped out; aborting"
                ) from None
        seed_shares = {owner: s for owner, (s, _) in self._held.items() if owner in survivors}
        key_shares = {owner: k for owner, (_, k) in self._held.items() if owner not in survivors}
        if set(seed_shares) & set(key_shares):  # impossible by construction; the one rule that must hold
            raise CryptoError("refusing to reveal both kinds of share for one peer")
        self._forget()
        self._state = ClientState.DONE
        return [UnmaskShares(self._digest, me, seed_shares, key_shares)]

    # ------------------------------------------------------------ helpers

    def _check_alive(self, alive: frozenset[int], what: str) -> None:
        cfg = self.config
        if len(alive) < cfg.threshold:
            raise RoundError(
                f"only {len(alive)} of client {self.id}'s {cfg.holder_count} share holders {what}; "
                f"{cfg.threshold} are needed: aborting"
            )
        if cfg.full_graph and len(alive) < cfg.min_clients:
            raise RoundError(f"only {len(alive)} clients {what}; the round needs {cfg.min_clients}: aborting")

    def _expect(self, state: ClientState, what: str) -> None:
        if self._state is ClientState.ABORTED:
            raise ProtocolError(f"client {self.id} has left the round ({self.abort_reason}); it ignores {what}")
        if self._state is not state:
            raise ProtocolError(f"client {self.id} got {what} in state {self._state.value}; expected {state.value}")

    def _require_seed(self) -> bytes:
        if self._seed is None:
            raise ProtocolError("this client's secrets are gone (the round is over)")
        return self._seed

    def _guard(self, step: Callable[[], list[Message]]) -> list[Message]:
        try:
            return step()
        except FedRoomError as exc:
            self._abort(exc.message)
            raise

    def _forget(self) -> None:
        self._seed = None
        self._held = {}
        self._enc_shared = {}
        self._input = None
        self._extra = None
        self._mask = generate_keypair()  # drop the reference to the shared masking key
        self._enc = generate_keypair()

    def _abort(self, reason: str) -> None:
        self._forget()
        self._state = ClientState.ABORTED
        self.abort_reason = reason
