"""Websockets glue: :mod:`.server` (serve a sans-I/O machine) and :mod:`.client` (connect, authenticate, backoff)."""

__all__: list[str] = []
