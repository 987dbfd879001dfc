"""Where an entry point will write, checked before it does any work (train.py, eval.py, generate_captions.py,
export_onnx.py): a folder that is a file, a read-only location or a wrong file extension is refused in one line
(:class:`~mmreid.errors.UsageError`) instead of a traceback after minutes of training, feature extraction or
paid caption requests.

Writability is tested by creating (and removing) a temporary file, not with ``os.access``: as root ``os.access``
says yes to a folder of mode 0555, and only a real write sees a read-only mount, a quota or a full disk's inodes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import UsageError

__all__ = ["check_output_dir", "check_output_file"]


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(folder: Path, option: str, path: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"{option} {path}: cannot write in {folder} ({reason}); expected a writable location") \
            from None


def check_output_dir(path: str | Path, option: str) -> Path:
    """``path`` is, or can be created as, a folder this process can write in; returns it. Creates nothing."""
    path = Path(path).expanduser()
    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        what = "is a file" if existing == path.absolute() else f"lies under the file {existing}"
        raise UsageError(f"{option} {path} {what}; expected a folder (existing or to be created)")
    _check_writable(existing, option, path)
    return path


def check_output_file(path: str | Path, option: str, suffix: str | None = None) -> Path:
    """``path`` names a file (not a folder) with ``suffix`` (e.g. ``.onnx``), in an existing folder this process
    can write in; returns it. Creates nothing."""
    path = Path(path).expanduser()
    if path.is_dir():
        example = path / f"model{suffix or ''}"
        raise UsageError(f"{option} {path} is a folder; expected a file name such as {example}")
    if suffix is not None and path.suffix.lower() != suffix:
        raise UsageError(f"{option} {path}: expected a {suffix} file name (e.g. {path.with_suffix(suffix)}), "
                         f"got {path.suffix or 'no extension'}")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {path}: folder {path.parent} does not exist; create it first")
    _check_writable(path.parent, option, path)
    return path
