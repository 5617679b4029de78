"""fedjax_room: a Jupyter-native data clean room for federated learning with differential privacy."""

__version__ = "0.1.0"

__all__ = ["__version__"]
