"""The room service: the SQLite store and checkpoints, the server process.

Submodules: :mod:`.store`, :mod:`.server` (imported on use, so the pure parts stay light). Aggregation and the
server optimiser are the robust layer's (:mod:`fedjax_room.robust.aggregate`, :mod:`fedjax_room.robust.server`).
"""

__all__: list[str] = []
