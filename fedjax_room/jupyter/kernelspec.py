"""The "Clean Room (Python 3)" Jupyter kernel: IPython with the ``fedjax_room`` extension loaded.

:func:`kernel_json` is the pure kernelspec; :func:`install_kernel_spec` writes it (with ipykernel's
logos) to a temporary directory and installs it with jupyter_client's ``KernelSpecManager``, into the
user's, the environment's (``sys_prefix``) or a given prefix's ``share/jupyter/kernels``.

The kernel runs ``python -m ipykernel_launcher -f {connection_file} --ext=fedjax_room.jupyter``: ``--ext`` is
IPython's alias for ``InteractiveShellApp.extra_extensions``, so ``%room`` works in the first cell. It loads the
extension as ``fedjax_room.jupyter`` (the module that defines it), so that a notebook's own ``%load_ext
fedjax_room`` — which every notebook has, to run on a plain kernel too — finds the magics registered and says
nothing, rather than IPython's "already loaded".

How the kernel becomes available: ``pip install`` puts :data:`PACKAGED_KERNEL_JSON` (argv ``python``, which
jupyter_client replaces with the Python that runs the server) in ``share/jupyter/kernels/fedjax-room`` (the
wheel's shared data, pyproject.toml); an editable or source install has no shared data, so the first ``%load_ext
fedjax_room`` runs :func:`ensure_kernel_spec`, which installs it for the user when Jupyter cannot find it.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedjax_room.errors import ConfigError

__all__ = [
    "DISPLAY_NAME",
    "KERNEL_NAME",
    "PACKAGED_KERNEL_JSON",
    "ensure_kernel_spec",
    "install_kernel_spec",
    "kernel_json",
]

KERNEL_NAME = "fedjax-room"
DISPLAY_NAME = "Clean Room (Python 3)"
#: The kernelspec the wheel installs (``kernel_json(python="python")``; tests check the two agree).
PACKAGED_KERNEL_JSON = Path(__file__).resolve().parents[2] / "jupyter-kernel" / KERNEL_NAME / "kernel.json"

log = logging.getLogger("fedjax_room.jupyter")


def kernel_json(*, python: str | None = None, display_name: str = DISPLAY_NAME) -> dict[str, Any]:
    """The kernelspec: how Jupyter starts the clean-room kernel."""
    return {
        "argv": [
            python or sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            "--ext=fedjax_room.jupyter",
        ],
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": True, "fedjax_room": {"extension": "fedjax_room"}},
    }


def _copy_logos(dest: Path) -> None:
    try:
        import ipykernel
    except ImportError:  # pragma: no cover - ipykernel is a dependency
        return
    resources = Path(ipykernel.__file__).parent / "resources"
    for name in ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg"):
        if (resources / name).is_file():
            shutil.copy(resources / name, dest / name)


def install_kernel_spec(
    *,
    user: bool = False,
    sys_prefix: bool = False,
    prefix: str | Path | None = None,
    name: str = KERNEL_NAME,
    display_name: str = DISPLAY_NAME,
    python: str | None = None,
) -> Path:
    """Install the kernelspec and return the directory it went to.

    At most one of ``user``, ``sys_prefix`` and ``prefix``; with none, it goes to the system-wide
    Jupyter directory (which may need administrator rights).
    """
    if sum(bool(x) for x in (user, sys_prefix, prefix)) > 1:
        raise ConfigError("choose at most one of --user, --sys-prefix and --prefix DIR")
    from jupyter_client.kernelspec import KernelSpecManager

    target_prefix = str(prefix) if prefix else (sys.prefix if sys_prefix else None)
    with tempfile.TemporaryDirectory(prefix="fedjax-room-kernel-") as tmp:
        source = Path(tmp) / name
        source.mkdir()
        (source / "kernel.json").write_text(json.dumps(kernel_json(python=python, display_name=display_name), indent=1))
        _copy_logos(source)
        try:
            destination = KernelSpecManager().install_kernel_spec(
                str(source), kernel_name=name, user=user, prefix=target_prefix
            )
        except ValueError as exc:  # e.g. an invalid kernel name
            raise ConfigError(f"cannot install the kernel: {exc}") from None
        except OSError as exc:
            raise ConfigError(
                f"cannot install the kernel ({exc.strerror or exc}); try --user or --sys-prefix"
            ) from None
    return Path(destination)


def ensure_kernel_spec() -> Path | None:
    """Install the kernel for this user unless Jupyter already finds one named :data:`KERNEL_NAME` (a wheel's
    shared data, an earlier call, ``fedjax-room install-kernel``). Returns where it was installed, or None when
    nothing was done. Never raises: a kernel that cannot be installed is logged, and ``%load_ext`` goes on."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        if KERNEL_NAME in KernelSpecManager().find_kernel_specs():
            return None
        path = install_kernel_spec(user=True)
    except Exception as exc:  # e.g. a read-only home: the magics work without the kernel
        log.warning("could not install the %r kernel (%s); run `fedjax-room install-kernel --user`", DISPLAY_NAME, exc)
        return None
    log.info("installed the %r kernel in %s", DISPLAY_NAME, path)
    return path
