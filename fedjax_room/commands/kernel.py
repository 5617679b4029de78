"""``fedjax-room install-kernel [--user|--sys-prefix|--prefix DIR]``: the "Clean Room (Python 3)" kernel.

Installs a Jupyter kernelspec that starts IPython (this Python) with the ``fedjax_room`` extension
loaded, so ``%room`` works from the first cell and the kernel appears in the JupyterLab launcher.
Without a location flag it installs system-wide (which may need administrator rights).
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run_install_kernel"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``install-kernel`` command."""
    from fedjax_room.jupyter.kernelspec import DISPLAY_NAME, KERNEL_NAME

    parser = subparsers.add_parser(
        "install-kernel",
        help=f"install the {DISPLAY_NAME!r} Jupyter kernel",
        description=f"Install the {DISPLAY_NAME!r} Jupyter kernel: IPython with the %room magics loaded.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="install into this Python environment (sys.prefix)")
    where.add_argument("--prefix", metavar="DIR", help="install into DIR/share/jupyter/kernels")
    parser.add_argument("--name", default=KERNEL_NAME, help=f"kernel name (default {KERNEL_NAME})")
    parser.add_argument("--display-name", default=DISPLAY_NAME, help="name shown in Jupyter")
    parser.set_defaults(func=run_install_kernel)


def run_install_kernel(args: argparse.Namespace) -> int:
    """Install the kernelspec where the flags say and print where it went."""
    from fedjax_room.jupyter.kernelspec import install_kernel_spec

    destination = install_kernel_spec(
        user=args.user,
        sys_prefix=args.sys_prefix,
        prefix=args.prefix,
        name=args.name,
        display_name=args.display_name,
    )
    print(f"Installed kernelspec {args.name!r} ({args.display_name}) in {destination}")
    return 0
