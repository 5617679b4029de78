"""Secure aggregation (Bonawitz et al., CCS 2017; SecAgg+ of Bell et al., CCS 2020) and distributed DP.

The coordinator learns the sum of the sites' updates and nothing else about any one of them. The
library is sans-I/O: :class:`SecAggClient` and :class:`SecAggServer` take messages (and the clock) and
return messages; the room carries them. See ``docs/secagg.md`` for the protocol, the message table and
the threat model.

Modules: :mod:`~fedjax_room.secagg.encoding` (fixed point in ``Z_{2^b}``), :mod:`~.shamir`,
:mod:`~.masking` (key agreement, mask expansion, SecAgg+ graph), :mod:`~.config`, :mod:`~.messages`,
:mod:`~.channels` (signatures and share sealing), :mod:`~.client`, :mod:`~.server`, :mod:`~.protocol`
(a one-process driver for tests and benchmarks), :mod:`~.ddp` (distributed DP with Skellam noise).
"""

from fedjax_room.secagg.client import ClientState, SecAggClient
from fedjax_room.secagg.config import PROTOCOL, SecAggConfig
from fedjax_room.secagg.encoding import FixedPointCodec, from_signed, ring_dtype, to_signed
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
    decode,
    encode,
    message_from_dict,
)
from fedjax_room.secagg.server import SecAggServer, ServerState

__all__ = [
    "PROTOCOL",
    "AdvertiseKeys",
    "ClientState",
    "ConsistencySignature",
    "Envelope",
    "FixedPointCodec",
    "KeyDirectory",
    "MaskedInput",
    "Message",
    "RoundAborted",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "ServerState",
    "ShareBundle",
    "ShareKeys",
    "SurvivorList",
    "UnmaskRequest",
    "UnmaskShares",
    "decode",
    "encode",
    "from_signed",
    "message_from_dict",
    "ring_dtype",
    "to_signed",
]
