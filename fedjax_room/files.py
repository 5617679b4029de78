"""Private state on disk: directories 0700, files 0600, written atomically.

Everything a party keeps (the coordinator's SQLite database, checkpoints and audit log; a site's ledgers,
releases, ring vectors, approvals and audit log; keys; the data an embedded room writes for its sites) goes
through these helpers, so no other local user can read it whatever the process umask:

- :func:`private_dir` creates a directory (and any missing parents) with mode 0700 and tightens an existing
  one that is group- or other-accessible;
- :func:`atomic_write` writes a file 0600 through a temporary file, fsync and rename (and an fsync of the
  directory), so a reader sees the old bytes or the new, never a mix;
- :func:`private_file` tightens one existing file to 0600; :func:`open_private` opens (creating 0600) a file
  descriptor.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "atomic_write", "fsync_dir", "open_private", "private_dir", "private_file"]

#: Mode of every state directory.
DIR_MODE = 0o700
#: Mode of every state file.
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str], *, tighten: bool = True) -> Path:
    """``path`` as a directory only its owner can enter (created, with missing parents, 0700); returns it.

    ``tighten``: an existing ``path`` that others can read is made 0700 too (state directories); False for a
    folder that may be the user's own (where a key file is saved), which is left as it is.
    """
    p = Path(path)
    missing = []
    probe = p
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:  # made meanwhile by another process
            pass
        os.chmod(d, DIR_MODE)  # mkdir's mode is masked by the umask
    mode = stat.S_IMODE(os.stat(p).st_mode)
    if tighten and mode & 0o077:
        os.chmod(p, mode & ~0o077 | 0o700)
    return p


def private_file(path: str | os.PathLike[str]) -> None:
    """Make an existing file readable and writable by its owner only (nothing if it does not exist)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        os.chmod(path, mode & 0o700)


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open(path, flags)`` creating the file 0600 (an existing file is tightened to 0600)."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory (so a rename in it is durable); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a 0600 temporary file, fsync, rename, fsync of the folder.

    The folder is created (0700) if missing.
    """
    p = Path(path)
    private_dir(p.parent)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(p.parent)
