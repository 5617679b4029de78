"""The room service: SQLite store and checkpoints, aggregation and server optimisers, the server process.

Submodules: :mod:`.store`, :mod:`.aggregation`, :mod:`.server` (imported on use, so the pure parts
stay light).
"""

__all__: list[str] = []
