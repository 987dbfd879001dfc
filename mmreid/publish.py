"""One way to write an output so that a reader never sees it half-written.

Every writer of the project (datasets, synthetic releases, embeddings, converted checkpoints, ONNX graphs, Hub
downloads) fills a hidden sibling of its output and renames it into place once complete: a rename within one file
system is atomic, so a run killed at any moment leaves either the old output or the new one, never a mixture, and
the hidden leftover of a killed run is removed by the next run.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def partial_path(output: Path) -> Path:
    """Where ``output`` is written before it is complete (hidden, beside it, so the rename stays on one disk)."""
    return output.parent / f".{output.name}.partial"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _with_usual_permissions(path: Path) -> None:
    """``tempfile`` makes private files; a published output gets what the user's umask gives a new file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextmanager
def atomic_output(output: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield the hidden path to write ``output`` into (a file or a folder: the caller creates it); once the block
    ends without an error it is renamed to ``output``, replacing an existing one only with ``overwrite``. On an
    error (or Ctrl-C) the hidden path is removed and ``output`` is left as it was."""
    output = Path(output).expanduser().absolute()
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists")
    work = partial_path(output)
    _remove(work)  # left by a killed run
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield work
        if not work.exists():
            raise FileNotFoundError(f"nothing was written for {output}")
        _with_usual_permissions(work)
        if output.exists() and not overwrite:
            raise FileExistsError(f"{output} appeared while it was being written; nothing was replaced")
        if output.is_dir() and not output.is_symlink():
            old = output.parent / f".{output.name}.old"
            _remove(old)
            os.replace(output, old)
            os.replace(work, output)
            _remove(old)
        else:
            os.replace(work, output)
    except BaseException:
        _remove(work)
        raise
