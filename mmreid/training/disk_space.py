"""A full disk, said in one line: the writers under a save word it in several ways, none of which says "disk full"
to a user (torch.save: ``enforce fail ... unexpected pos``, ``file write failed``; safetensors: ``os error 28``;
Python: ``OSError: [Errno 28] No space left on device``). :func:`disk_full_error` recognises them and names the
folder and the space left on it."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from ..errors import UsageError

__all__ = ["DiskFullError", "disk_full_error", "format_bytes"]

# Messages that always mean ENOSPC, and those of a failed write that mean it when the disk is (nearly) full.
NO_SPACE_MESSAGES = ("no space left on device", "os error 28", "storagefull")
WRITE_FAILED_MESSAGES = ("unexpected pos", "file write failed")
NEARLY_FULL_BYTES = 64 * 2**20


class DiskFullError(UsageError):
    """The output folder's file system is full; the message names the folder and the space left."""


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_full_error(exc: BaseException, folder: str | Path) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``folder`` when ``exc`` (or what caused it) is a write that found no space;
    None for any other error."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        usage = shutil.disk_usage(existing)
    except OSError:
        usage = None
    for err in _chain(exc):
        text = str(err).lower()
        no_space = (isinstance(err, OSError) and err.errno == errno.ENOSPC) or any(m in text for m in NO_SPACE_MESSAGES)
        failed_write = any(m in text for m in WRITE_FAILED_MESSAGES)
        if no_space or (failed_write and usage is not None and usage.free < NEARLY_FULL_BYTES):
            space = (f"{format_bytes(usage.free)} free of {format_bytes(usage.total)}" if usage is not None
                     else "free space unknown")
            return DiskFullError(f"No space left on device writing to {folder} ({space}); free some space or use "
                                 "another --output-dir, then --resume from the last complete checkpoint")
    return None
