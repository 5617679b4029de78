"""Typed, versioned room messages, the codec, the handshake, and the sans-I/O coordinator and site machines.

See ``docs/protocol.md``. Submodules: :mod:`.codec` (msgpack, arrays, trees), :mod:`.messages`,
:mod:`.config` (:class:`RunConfig`), :mod:`.handshake`, :mod:`.coordinator`
(:class:`CoordinatorMachine`), :mod:`.site` (:class:`SiteMachine`), :mod:`.actions`.
"""

from fedjax_room.protocol.config import RunConfig
from fedjax_room.protocol.messages import VERSION, decode, encode

__all__ = ["VERSION", "RunConfig", "decode", "encode"]
