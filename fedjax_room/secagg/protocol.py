"""The SecAgg protocol in one place: the two state machines, and an in-process driver.

The state machines live in :mod:`fedjax_room.secagg.client` (:class:`SecAggClient`) and
:mod:`fedjax_room.secagg.server` (:class:`SecAggServer`); the messages and their wire format in
:mod:`fedjax_room.secagg.messages`. One round, as the room runs it:

1. The coordinator builds a :class:`SecAggConfig` (round id, ``{site id: Ed25519 public key}``, vector
   length, modulus, threshold, SecAgg+ degree), sends ``config.to_dict()`` to the sites and makes a
   :class:`SecAggServer`. Each site checks the config and makes a :class:`SecAggClient`.
2. Each site sends ``client.advertise()``, and ``client.set_input(ring_vector)`` when its update is
   ready (the masked input goes out once key sharing is done).
3. Every message either side returns is carried to the other: client messages to
   ``server.receive(msg, now)``, each server :class:`Envelope` to ``clients[env.recipient].receive(msg)``.
   The room calls ``server.tick(now)`` on a timer and ``server.drop(id)`` when a connection closes.
4. When ``server.state`` is DONE, ``server.result()`` is the sum of the inputs of
   ``server.survivors``, mod ``2**bits``; decode it with the codec that encoded the inputs.

:func:`run_round` does exactly this in one process (optionally through the msgpack wire format), with
dropouts injected at any stage; the tests and ``benchmarks/secagg.py`` use it.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedjax_room.errors import ConfigError, FedRoomError
from fedjax_room.secagg.client import ClientState, SecAggClient
from fedjax_room.secagg.config import SecAggConfig
from fedjax_room.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    Envelope,
    MaskedInput,
    Message,
    ShareKeys,
    UnmaskShares,
    decode,
    encode,
)
from fedjax_room.secagg.server import SecAggServer, ServerState

__all__ = [
    "DROP_POINTS",
    "ClientState",
    "RoundRun",
    "SecAggClient",
    "SecAggServer",
    "ServerState",
    "run_round",
]

_T = TypeVar("_T")

DROP_POINTS = ("advertise", "share", "input", "consistency", "unmask")
"""Where :func:`run_round` can make a client vanish: instead of sending that stage's message."""

_POINT_OF: dict[type[Message], str] = {
    AdvertiseKeys: "advertise",
    ShareKeys: "share",
    MaskedInput: "input",
    ConsistencySignature: "consistency",
    UnmaskShares: "unmask",
}

Observer = Callable[[str, int, Message, bytes | None], None]
Intercept = Callable[[str, int, Message], Message]


@dataclass
class RoundRun:
    """What :func:`run_round` saw: the state machines, the outcome, and per-party costs."""

    server: SecAggServer
    clients: dict[int, SecAggClient]
    total: np.ndarray | None
    error: FedRoomError | None
    client_seconds: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    server_seconds: float = 0.0
    bytes_up: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    bytes_down: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    client_errors: dict[int, FedRoomError] = field(default_factory=dict)
    rejected: list[tuple[int, FedRoomError]] = field(default_factory=list)
    """Client messages the server refused (the sender was then dropped), in order."""


def run_round(
    config: SecAggConfig,
    identity_keys: Mapping[int, Ed25519PrivateKey],
    inputs: Mapping[int, np.ndarray],
    *,
    drop: Mapping[str, Iterable[int]] | None = None,
    wire: bool = True,
    observer: Observer | None = None,
    intercept: Intercept | None = None,
    server: SecAggServer | None = None,
    clients: Mapping[int, SecAggClient] | None = None,
) -> RoundRun:
    """Run one round in-process; clients in ``drop[point]`` vanish instead of sending at ``point``.

    Args:
        config: the round.
        identity_keys: ``{id: Ed25519 private key}`` for every client in the config.
        inputs: ``{id: ring vector}``; every client that gets to stage 2 needs one.
        drop: ``{point: ids}`` with points from :data:`DROP_POINTS`.
        wire: pass every message through :func:`encode` / :func:`decode` (and count bytes).
        observer: called as ``observer(direction, client id, message, wire bytes or None)`` for every
            message, ``direction`` being ``"up"`` (to the server) or ``"down"``.
        server, clients: use these state machines (e.g. instrumented or lying ones) instead of new ones.

    Returns:
        a :class:`RoundRun`; ``total`` is the server's result, or ``None`` with ``error`` set if the round
        aborted. Errors raised by individual clients are collected in ``client_errors``.
    """
    drop = {point: set(ids) for point, ids in (drop or {}).items()}
    unknown = set(drop) - set(DROP_POINTS)
    if unknown:
        raise ConfigError(f"unknown drop points {sorted(unknown)}; use {DROP_POINTS}")
    server = server or SecAggServer(config)
    clients = (
        dict(clients)
        if clients is not None
        else {cid: SecAggClient(config, cid, identity_keys[cid]) for cid in config.ids}
    )
    run = RoundRun(server=server, clients=clients, total=None, error=None)
    gone: set[int] = set()
    queue: deque[Envelope] = deque()

    def carry(direction: str, cid: int, message: Message) -> Message:
        if intercept is not None:
            message = intercept(direction, cid, message)
        data = encode(message) if wire else None
        if data is not None:
            (run.bytes_up if direction == "up" else run.bytes_down)[cid] += len(data)
        if observer is not None:
            observer(direction, cid, message, data)
        return decode(data) if data is not None else message

    def to_server(cid: int, replies: list[Message]) -> None:
        for reply in replies:
            if cid in drop.get(_POINT_OF[type(reply)], ()):
                gone.add(cid)
                queue.extend(_timed_server(run, partial(server.drop, cid)))
                return
            message = carry("up", cid, reply)
            try:
                queue.extend(_timed_server(run, partial(server.receive, message)))
            except FedRoomError as exc:  # the room would log this and disconnect the site
                run.rejected.append((cid, exc))
                gone.add(cid)
                queue.extend(_timed_server(run, partial(server.drop, cid)))
                return

    for cid in config.ids:
        client = clients[cid]
        if cid in inputs:
            _timed_client(run, cid, partial(client.set_input, inputs[cid]))
        to_server(cid, [_timed_client(run, cid, client.advertise)])
    while queue:
        envelope = queue.popleft()
        cid = envelope.recipient
        if cid in gone:
            continue
        message = carry("down", cid, envelope.message)
        try:
            replies = _timed_client(run, cid, partial(clients[cid].receive, message))
        except FedRoomError as exc:
            run.client_errors[cid] = exc
            gone.add(cid)
            queue.extend(_timed_server(run, partial(server.drop, cid)))
            continue
        to_server(cid, replies)
    try:
        run.total = server.result()
    except FedRoomError as exc:
        run.error = exc
    return run


def _timed_client(run: RoundRun, cid: int, step: Callable[[], _T]) -> _T:
    start = time.perf_counter()
    try:
        return step()
    finally:
        run.client_seconds[cid] += time.perf_counter() - start


def _timed_server(run: RoundRun, step: Callable[[], _T]) -> _T:
    start = time.perf_counter()
    try:
        return step()
    finally:
        run.server_seconds += time.perf_counter() - start
