"""One module per ``fedjax-room`` command group; each exposes ``register(subparsers)``."""
