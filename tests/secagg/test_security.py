"""What the coordinator can and cannot learn, and what a lying or tampering one gets caught doing."""

import numpy as np
import pytest
from msgspec.structs import replace

from fedjax_room.errors import BadSignatureError, CryptoError, ProtocolError, RoundError
from fedjax_room.secagg import (
    AdvertiseKeys,
    ClientState,
    KeyDirectory,
    MaskedInput,
    SecAggClient,
    SecAggServer,
    ServerState,
    ShareBundle,
    ShareKeys,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
    channels,
    client,
)
from fedjax_room.secagg.masking import expand_mask, generate_keypair, x25519_private_bytes, x25519_public_bytes
from fedjax_room.secagg.protocol import run_round
from fedjax_room.secagg.shamir import combine_bytes


def _uniformity_chi2(values: np.ndarray) -> float:
    counts = np.bincount(np.frombuffer(values.tobytes(), dtype=np.uint8), minlength=256)
    return float((((counts - counts.mean()) ** 2) / counts.mean()).sum())


def test_the_server_holds_only_masked_inputs_and_ciphertexts(room, monkeypatch):
    r = room(6, length=8192)
    cfg = r.config
    ramp = (np.arange(cfg.vector_length) % 7).astype(np.uint32)  # very structured inputs
    inputs = {cid: ramp * cid for cid in cfg.ids}
    shared_secrets = []  # (owner, secret, {holder: share}) as each client splits them
    real_split = client.split_bytes

    def recording_split(secret, threshold, xs):
        shares = real_split(secret, threshold, xs)
        shared_secrets.append((secret, shares))
        return shares

    monkeypatch.setattr(client, "split_bytes", recording_split)
    clients = {cid: SecAggClient(cfg, cid, r.keys[cid]) for cid in cfg.ids}
    private = {
        cid: [c._seed, x25519_private_bytes(c._mask), x25519_private_bytes(c._enc)] for cid, c in clients.items()
    }
    received = []  # everything the server is given, as wire bytes
    run = run_round(
        cfg,
        r.keys,
        inputs,
        clients=clients,
        drop={"input": [6]},  # one dropout, so masking keys are revealed too
        observer=lambda d, cid, m, b: received.append((m, b)) if d == "up" else None,
    )
    assert run.error is None
    assert np.array_equal(run.total, sum(inputs[c] for c in (1, 2, 3, 4, 5)))

    everything = b"".join(b for _, b in received)
    before_unmask = b"".join(b for m, b in received if not isinstance(m, UnmaskShares))
    for cid, secrets_of_client in private.items():
        for secret in secrets_of_client[:2] + [secrets_of_client[2]]:
            assert secret not in everything, f"a secret of client {cid} reached the server"
    for _, shares in shared_secrets:
        for share in shares.values():
            assert share not in before_unmask  # shares only travel sealed

    # every share ciphertext is AEAD; the server, holding only public keys, cannot open any
    outsider = generate_keypair()
    adverts = {m.sender: m for m, _ in received if isinstance(m, AdvertiseKeys)}
    for m, _ in received:
        if isinstance(m, ShareKeys):
            for to, ct in m.ciphertexts.items():
                guess = channels.enc_shared_secret(outsider, adverts[to].enc_key)
                with pytest.raises(CryptoError):
                    channels.open_shares(guess, cfg.digest, m.sender, to, ct)

    # one masked input is statistically uniform and uncorrelated with the (structured) input ...
    masked = {m.sender: np.frombuffer(m.data, dtype="<u4") for m, _ in received if isinstance(m, MaskedInput)}
    for cid, y in masked.items():
        assert _uniformity_chi2(y) < 330  # 255 degrees of freedom, p ~ 1e-3
        assert abs(np.corrcoef(y.astype(np.float64), inputs[cid].astype(np.float64))[0, 1]) < 0.05
    # ... and still is after the server removes the self-mask it rebuilt (the pairwise masks remain)
    unmask = [m for m, _ in received if isinstance(m, UnmaskShares)]
    seed_1 = combine_bytes({m.sender: m.seed_shares[1] for m in unmask}, cfg.threshold)
    residue = masked[1] - expand_mask(seed_1, cfg.vector_length, 32)
    assert _uniformity_chi2(residue) < 330 and np.mean(residue == inputs[1]) < 0.01
    # for every client the server got seed shares or key shares, never both
    seed_owners = {o for m in unmask for o in m.seed_shares}
    key_owners = {o for m in unmask for o in m.key_shares}
    assert seed_owners == {1, 2, 3, 4, 5} and key_owners == {6}


class LyingServer(SecAggServer):
    """Tells ``victim`` that ``claimed`` dropped (though its input arrived) and accepts any signature."""

    def __init__(self, config, victim, claimed, forward_victim_signature=True):
        super().__init__(config)
        self.victim, self.claimed, self.forward = victim, claimed, forward_victim_signature

    def _broadcast(self, closed, live):
        envelopes = super()._broadcast(closed, live)
        if closed is ServerState.COLLECT:
            lie = SurvivorList(self._digest, tuple(sorted(live - {self.claimed})))
            envelopes = [type(e)(e.recipient, lie) if e.recipient == self.victim else e for e in envelopes]
        if closed is ServerState.CONSISTENCY:
            out = []
            for e in envelopes:
                sigs = dict(e.message.signatures)
                if e.recipient == self.victim:
                    sigs.pop(self.claimed)  # keep the story straight for the victim
                elif not self.forward:
                    sigs.pop(self.victim)
                out.append(type(e)(e.recipient, UnmaskRequest(self._digest, sigs)))
            envelopes = out
        return envelopes

    def _on_signature(self, msg):
        self._signatures[msg.sender] = msg.signature


def test_a_server_lying_about_dropouts_is_caught_by_the_consistency_check(room):
    r = room(7)
    seen = []
    server = LyingServer(r.config, victim=1, claimed=4)
    run = run_round(r.config, r.keys, r.inputs, server=server, observer=lambda d, c, m, b: seen.append(m))
    assert not any(isinstance(m, UnmaskShares) for m in seen), "no client may reveal anything"
    assert set(run.client_errors) == set(r.config.ids)
    assert all(isinstance(e, BadSignatureError) for e in run.client_errors.values())
    assert "different stories" in str(run.client_errors[2])
    assert isinstance(run.error, RoundError) and run.total is None


def test_hiding_the_victims_signature_still_gets_no_masking_key(room):
    # The server hides client 1's (different) signature from the others: they reveal seed shares of
    # client 4, as it did survive. Client 1 sees signatures over a list that is not the one it was
    # given and refuses, so nobody reveals client 4's masking key: its input stays masked.
    r = room(7)
    seen = []
    server = LyingServer(r.config, victim=1, claimed=4, forward_victim_signature=False)
    run = run_round(r.config, r.keys, r.inputs, server=server, observer=lambda d, c, m, b: seen.append(m))
    assert isinstance(run.client_errors[1], BadSignatureError)
    revealed = [m for m in seen if isinstance(m, UnmaskShares)]
    assert revealed and all(4 not in m.key_shares for m in revealed)
    assert 1 not in {m.sender for m in revealed}


def test_a_client_answers_one_unmask_request_only(room):
    r = room(5)
    run = run_round(r.config, r.keys, r.inputs)
    c = run.clients[2]
    assert c.state is ClientState.DONE
    with pytest.raises(ProtocolError):
        c.receive(UnmaskRequest(r.config.digest, {}))


def test_unmask_request_with_too_few_signatures_reveals_nothing(room):
    r = room(5)
    grab = {}

    def intercept(direction, cid, m):
        if isinstance(m, UnmaskRequest):
            grab[cid] = m
            return UnmaskRequest(m.round, {k: v for k, v in m.signatures.items() if k in (cid, 1)})
        return m

    run = run_round(r.config, r.keys, r.inputs, intercept=intercept)
    assert all(isinstance(e, RoundError) for e in run.client_errors.values()) and len(run.client_errors) == 5
    assert run.total is None


def _flip(data: bytes, at: int = 20) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def test_tampered_share_ciphertexts_are_rejected(room):
    r = room(5)

    def tamper(direction, cid, m):
        if isinstance(m, ShareBundle) and cid == 2:
            return ShareBundle(m.round, {**m.ciphertexts, 1: _flip(m.ciphertexts[1])})
        return m

    run = run_round(r.config, r.keys, r.inputs, intercept=tamper)
    assert isinstance(run.client_errors[2], CryptoError) and "does not authenticate" in str(run.client_errors[2])
    assert run.clients[2].state is ClientState.ABORTED
    assert np.array_equal(run.total, r.expected((1, 3, 4, 5)))  # client 2 left; the rest finish


def test_ciphertexts_moved_between_pairs_are_rejected(room):
    r = room(5)

    def swap(direction, cid, m):
        if isinstance(m, ShareBundle) and cid == 3:
            return ShareBundle(m.round, {**m.ciphertexts, 1: m.ciphertexts[2], 2: m.ciphertexts[1]})
        return m

    run = run_round(r.config, r.keys, r.inputs, intercept=swap)
    assert isinstance(run.client_errors[3], CryptoError)


def test_bad_signatures_are_rejected(room):
    r = room(5)
    cfg = r.config
    attacker = generate_keypair()

    def swap_key(direction, cid, m):  # the server substitutes its own masking key for client 1's
        if isinstance(m, KeyDirectory) and cid == 2:
            evil = x25519_public_bytes(attacker)
            adverts = tuple(replace(a, mask_key=evil) if a.sender == 1 else a for a in m.adverts)
            return KeyDirectory(m.round, adverts)
        return m

    run = run_round(cfg, r.keys, r.inputs, intercept=swap_key)
    assert isinstance(run.client_errors[2], BadSignatureError)

    def forge(direction, cid, m):  # forged client messages are refused by the server
        if direction == "up" and cid == 3 and isinstance(m, AdvertiseKeys):
            return replace(m, signature=_flip(m.signature, 3))
        if direction == "up" and cid == 4 and isinstance(m, MaskedInput):
            return replace(m, data=_flip(m.data, 0))
        return m

    run = run_round(cfg, r.keys, r.inputs, intercept=forge)
    assert [(cid, type(e)) for cid, e in run.rejected] == [(3, BadSignatureError), (4, BadSignatureError)]
    assert np.array_equal(run.total, r.expected((1, 2, 5)))

    server = SecAggServer(cfg)  # client 3 signing as client 1
    impostor = SecAggClient(cfg, 3, r.keys[3]).advertise()
    fake = replace(impostor, sender=1)
    with pytest.raises(BadSignatureError):
        server.receive(fake)


def test_replayed_public_keys_are_rejected(room):
    r = room(4)
    cfg = r.config
    c1, c2, c3 = (SecAggClient(cfg, i, r.keys[i]) for i in (1, 2, 3))
    a1, a2 = c1.advertise(), c2.advertise()
    c3.advertise()
    # client 2 (malicious) re-advertises client 1's keys under its own signature
    transcript = channels.advert_transcript(cfg.digest, 2, a1.enc_key, a1.mask_key, a2.seed_commitment)
    copy = AdvertiseKeys(cfg.digest, 2, a1.enc_key, a1.mask_key, a2.seed_commitment, r.keys[2].sign(transcript))
    with pytest.raises(CryptoError, match="replayed"):
        c3.receive(KeyDirectory(cfg.digest, (a1, copy)))


def test_a_bad_share_at_unmasking_aborts_without_release(room):
    r = room(5)

    def corrupt(direction, cid, m):
        if direction == "up" and cid == 1 and isinstance(m, UnmaskShares):
            bad = bytes(33 - 1) + b"\x07"
            return UnmaskShares(m.round, m.sender, {**m.seed_shares, 3: bad}, m.key_shares)
        return m

    run = run_round(r.config, r.keys, r.inputs, intercept=corrupt)
    assert isinstance(run.error, CryptoError) and "commitment" in str(run.error)
    assert run.total is None and run.server.state is ServerState.ABORTED
