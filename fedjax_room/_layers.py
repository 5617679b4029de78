"""The layers of ``fedjax_room``, bottom first: what each package is and which packages it may import.

This table is the one declaration of the layering. ``tests/test_layering.py`` walks every import in the
package with :mod:`ast` (module level and inside functions, ``if TYPE_CHECKING`` blocks, relative and absolute,
and the module names handed to :func:`importlib.import_module`) and checks that

* each module belongs to a unit declared here (a subpackage or a top-level module),
* a unit imports only the units listed in its ``may_import``, each of them declared before it (so nothing
  imports upward and there are no cycles between units), and
* there is no import cycle between modules, inside a unit included.

``docs/architecture.md`` explains the layers; its table lists the same units in the same order with the same
``may import`` column (checked by the same test). Pure data: this module imports nothing.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ANY_BELOW", "LAYERS", "ROOT", "Layer", "allowed_imports"]

#: The name used for the package's own ``fedjax_room/__init__.py`` (the facade).
ROOT = "fedjax_room"
#: ``may_import`` value of a unit that may import any unit declared before it.
ANY_BELOW = ("*",)


class Layer(NamedTuple):
    """One unit: a subpackage of ``fedjax_room`` or a top-level module (``errors``), or the root facade."""

    name: str
    summary: str
    may_import: tuple[str, ...]


LAYERS: tuple[Layer, ...] = (
    Layer("_layers", "this declaration (pure data)", ()),
    Layer("_version", "the package version", ()),
    Layer("_lazy", "names a package imports on first use (PEP 562)", ()),
    Layer("errors", "the typed error hierarchy, one root FedRoomError", ()),
    Layer("files", "private files and folders: 0700/0600, atomic writes, folder fsync", ("errors",)),
    Layer("tree", "nested parameter trees: flatten/unflatten with depth and leaf bounds", ("errors",)),
    Layer("identity", "Ed25519 keys: generate, save, load, sign, verify, fingerprint", ("errors", "files")),
    Layer("models", "declarative model specs -> Flax modules, spec hashing", ("_lazy", "errors", "tree")),
    Layer("data", "datasets, schemas, loaders, built-in data, partitions", ("errors", "files")),
    Layer(
        "dp",
        "DP-SGD as optax pieces (clipping, noise, sampling) and privacy accounting",
        ("_lazy", "errors", "tree", "models"),
    ),
    Layer(
        "secagg",
        "secure aggregation: fixed-point encoding, masking, Shamir, the sans-I/O SecAgg machines",
        ("errors", "files", "tree", "identity", "dp"),
    ),
    Layer(
        "robust",
        "robust aggregation: aggregators, server optimisers, anomaly scores, defences, attack models",
        ("_lazy", "errors", "tree", "data"),
    ),
    Layer(
        "local",
        "the local (and central) trainer: a DP-SGD loop over one dataset",
        ("errors", "tree", "models", "data", "dp"),
    ),
    Layer("audit", "the append-only, hash-chained, signed audit log and its verifier", ("errors", "files", "identity")),
    Layer(
        "protocol",
        "typed messages, run options, the sans-I/O coordinator and site state machines",
        ("errors", "tree", "identity", "models", "dp", "secagg", "robust"),
    ),
    Layer(
        "room_manifest",
        "the room manifest: who is in the room, by key (trust roots)",
        ("errors", "files", "identity", "protocol"),
    ),
    Layer(
        "transport",
        "websocket glue: authenticated connections, frame limits, the coordinator pin",
        ("errors", "files", "identity", "protocol", "room_manifest"),
    ),
    Layer(
        "coordinator",
        "the room service: state store, checkpoints, the coordinator process",
        ("errors", "files", "tree", "identity", "models", "secagg", "robust", "audit", "protocol", "transport"),
    ),
    Layer(
        "site",
        "the data owner's agent: policy, ledger, plan, approvals, training and evaluation releases",
        (
            "errors",
            "files",
            "tree",
            "identity",
            "models",
            "data",
            "dp",
            "secagg",
            "robust",
            "local",
            "audit",
            "protocol",
            "room_manifest",
            "transport",
        ),
    ),
    Layer(
        "analyst",
        "the analyst's client (Room, Run, results): a pure client of the protocol over the transport",
        ("errors", "files", "tree", "identity", "models", "protocol", "room_manifest", "transport"),
    ),
    Layer("sim", "simulated rooms: the in-process simulation, the embedded demo room, attackers", ANY_BELOW),
    Layer(
        "jupyter",
        "magics, widgets, rich displays, the server extension, the kernelspec",
        ("_version", "_lazy", "errors", "files", "tree", "identity", "models", "data", "protocol", "analyst", "sim"),
    ),
    Layer("commands", "the command groups of the fedjax-room CLI", ANY_BELOW),
    Layer(ROOT, "the facade: fedjax_room.connect, %load_ext fedjax_room", ("_version", "analyst", "jupyter")),
    Layer("cli", "the fedjax-room entry point: assembles the command groups", ("_version", "errors", "commands", ROOT)),
    Layer("__main__", "python -m fedjax_room", ("cli",)),
)


def allowed_imports(name: str) -> frozenset[str]:
    """The units ``name`` may import (``ANY_BELOW`` expanded to every unit declared before it)."""
    names = [layer.name for layer in LAYERS]
    layer = LAYERS[names.index(name)]
    if layer.may_import == ANY_BELOW:
        return frozenset(names[: names.index(name)])
    return frozenset(layer.may_import)
