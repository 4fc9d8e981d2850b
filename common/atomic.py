"""Crash-safe file writes, shared by everything that must never leave half a file behind
(the privacy ledger, checkpoints, generated data, the metrics history)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` durable (the rename lives in the directory's own data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` by ``data`` so that a crash at any moment leaves the old or the new file.

    The data goes to a temporary file beside it (``.<name>.<random>.tmp``) created with ``mode``
    from the first byte on (a private key is never readable by others, even briefly), is flushed
    and fsynced, renamed over ``path``, and the directory is fsynced so the rename survives a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_directory(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int = 0o644) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8 with ``\n`` line ends."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)
