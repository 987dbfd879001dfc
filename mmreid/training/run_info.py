"""``run_info.json``: what a run was asked for and what it ran on (resolved options, seed, library versions, git
revision), written into the output directory and into every checkpoint."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from mmreid.machine import describe_cpu

__all__ = ["RUN_INFO_NAME", "RunInfoCallback", "collect_run_info"]

RUN_INFO_NAME = "run_info.json"


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def collect_run_info(config: Mapping[str, Any] | None = None, **extra) -> dict:
    """Resolved config, seed, library versions and git revision, for ``run_info.json``."""
    import accelerate
    import datasets
    import transformers

    info = {
        "config": dict(config or {}),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "accelerate": accelerate.__version__,
            "numpy": np.__version__,
        },
        "git_revision": _git_revision(),
        "platform": platform.platform(),
        "cpu": describe_cpu(),  # the instruction sets decide the matmul rounding, so the run's exact mAP
    }
    info.update(extra)
    return info


class RunInfoCallback(TrainerCallback):
    """Writes ``run_info.json`` into the output dir once the first optimizer step has succeeded (or at the end of a
    run without steps), and into each checkpoint once it is saved.

    Why not at train start: a run that fails on its first batch (an unreadable image, a model error) must leave
    nothing behind, so that the folder is not taken for a previous run; after one step the run is under way and the
    file says what it is."""

    def __init__(self, info: dict):
        self.info = info
        self._written = False

    def write(self, folder: str | os.PathLike) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / RUN_INFO_NAME).write_text(json.dumps(self.info, indent=2, default=str) + "\n")

    def _write_once(self, args, state) -> None:
        if state.is_world_process_zero and not self._written:
            self.write(args.output_dir)
            self._written = True

    def on_step_end(self, args, state, control, **kwargs):
        self._write_once(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._write_once(args, state)

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            self.write(checkpoint)
