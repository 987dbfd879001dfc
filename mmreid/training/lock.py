"""One run per output directory: an exclusive lock file, so that two ``train.py`` runs started at once into one
``--output-dir`` cannot both pass the "already holds a model" check and overwrite each other's checkpoints.

The lock is ``<output_dir>/.train.lock``, created with ``O_CREAT | O_EXCL`` (atomic, also on NFS v3+), holding the
owner's host, pid and start time as JSON. It is removed when the run ends, however it ends short of SIGKILL; a lock
whose process no longer runs on this host (killed, machine rebooted) is stale and taken over with a warning. A lock
from another host cannot be checked from here: the refusal says which file to delete if that run is gone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from ..errors import UsageError

__all__ = ["LOCK_NAME", "OutputDirLock"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".train.lock"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class OutputDirLock:
    """``with OutputDirLock(output_dir):`` holds the output directory for one run; refuses (:class:`UsageError`,
    naming the other run's host and pid) when another live run holds it. A folder the lock had to create is
    removed again on release when the run left nothing else in it."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_NAME
        self._created_dir = False
        self._held = False

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # being written this instant, or garbage: treated as held by an unknown process

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}, f)
        return True

    def acquire(self) -> None:
        if not self.output_dir.exists():
            self.output_dir.mkdir(parents=True)
            self._created_dir = True
        for _ in range(2):  # a second try after removing a stale lock
            if self._try_create():
                self._held = True
                return
            owner = self._owner()
            host, pid = owner.get("host"), owner.get("pid")
            if host == socket.gethostname() and isinstance(pid, int) and not _process_alive(pid):
                logger.warning("%s: taking over the lock of process %d on %s, which no longer runs", self.path, pid,
                               host)
                self.path.unlink(missing_ok=True)
                continue
            break
        self._remove_created_dir()
        who = f"process {pid} on {host}" if pid is not None else "another process"
        started = owner.get("started")
        since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if started else ""
        raise UsageError(f"--output-dir {self.output_dir} is in use by another train.py run ({who}{since}; lock file "
                         f"{self.path}); wait for it, pick another --output-dir, or delete the lock file if that run "
                         "is gone")

    def _remove_created_dir(self) -> None:
        if self._created_dir:
            try:
                self.output_dir.rmdir()  # only when empty: nothing of the run's is removed
            except OSError:
                pass
            self._created_dir = False

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False
        self._remove_created_dir()

    def __enter__(self) -> OutputDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
