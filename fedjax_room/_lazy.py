"""Names a package imports on first use (PEP 562), so that importing the package itself stays light.

``dp``, ``robust``, ``models``, ``sim`` and ``jupyter`` export names whose modules load JAX, flax or IPython; each
package's ``__init__`` declares where every such name lives and takes its ``__getattr__`` / ``__dir__`` from
:func:`lazy_names`. A package keeps the same names under ``if TYPE_CHECKING:`` for type checkers, IDEs and the
layering test (which reads imports, never runs them).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``name`` comes from the submodule ``package.where[name]``.

    The first look-up of a name imports its submodule and keeps the value in the package's namespace, so later
    look-ups never reach ``__getattr__``. A name not in ``where`` raises :class:`AttributeError`, as for any module.
    """

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
