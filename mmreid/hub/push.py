"""Pushing a training run to the Hub (``train.py --push-to-hub``, every ``--hub-strategy``).

What a user of ``transformers.Trainer`` expects, with the changes that keep every pushed revision loadable:

- a checkpoint push reads the *published* checkpoint (after the rename out of ``.incomplete/``, see
  :mod:`mmreid.training.checkpoints`), never the staging folder;
- one commit per save holds what a revision needs: the model files at the root (``config.json``, the weights, the
  model code, the processor, the pipeline), the card (``README.md``, ``LICENSE.md`` where the data is research-only)
  and ``training_args.json``; with ``--hub-strategy checkpoint`` / ``all_checkpoints`` the whole checkpoint too, under
  ``last-checkpoint/`` / ``checkpoint-N/`` (what ``--resume`` downloads, :mod:`mmreid.hub.resume`);
- the resume state (optimizer, scheduler, RNG: torch pickles; a LoRA run's unmerged adapters) goes only inside those
  checkpoint folders; nothing else pushed is a pickle, and hidden folders (``.incomplete/``, the upload snapshots)
  are never pushed.

Pushes run in the background, one at a time and in order (``HfApi.upload_folder(run_as_future=True)``); a save while
one is running is skipped unless ``--hub-always-push`` queues it, as in the Trainer. Each push uploads a snapshot of
hard links under ``<output_dir>/.hub-upload/``, so rotating old checkpoints away never deletes a file an upload is
reading. A failed push is logged as an error naming the checkpoint and the reason; the final push raises.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import HfApi
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, SaveStrategy

from ..errors import UsageError, first_line
from ..training.checkpoints import is_complete_checkpoint
from ..training.tuning import LORA_STATE_FILE

__all__ = ["FINAL_IGNORE_PATTERNS", "HubPushCallback", "LAST_CHECKPOINT", "RESUME_STATE_PATTERNS", "UPLOAD_STAGING",
           "push_output_dir"]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last-checkpoint"  # --hub-strategy checkpoint: the newest checkpoint, overwritten at every save
UPLOAD_STAGING = ".hub-upload"
# The resume state inside a checkpoint: the Trainer's (torch pickles, read back with torch.load(weights_only=True)) and
# a LoRA run's unmerged adapters (the weights at the root hold them merged).
RESUME_STATE_PATTERNS = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", LORA_STATE_FILE)
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl")
# The final push of the output folder: no hidden folders (.incomplete/, .hub-upload/), no local checkpoints (the
# strategy pushed those), no pickles. fnmatch's "*" crosses "/", so ".*" covers everything under a hidden folder.
FINAL_IGNORE_PATTERNS = [".*", "_*", f"{PREFIX_CHECKPOINT_DIR}-*", *PICKLE_PATTERNS]

CardWriter = Callable[[Path, object], None]  # (folder, TrainerState) -> writes README.md (+ LICENSE.md) there


class HubPushCallback(TrainerCallback):
    """Pushes every published checkpoint of a run to ``repo_id`` as one commit (see the module docstring).

    Args:
        repo_id: the model repo (``Trainer.hub_model_id``, created by the Trainer).
        write_card: writes the in-progress model card into a folder, from the trainer state.
    """

    def __init__(self, repo_id: str, write_card: CardWriter):
        self.repo_id = repo_id
        self.write_card = write_card
        self.pending: list[concurrent.futures.Future] = []
        self.failures: list[str] = []
        self._api: HfApi | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            shutil.rmtree(Path(args.output_dir) / UPLOAD_STAGING, ignore_errors=True)  # left by a killed run

    def on_save(self, args, state, control, **kwargs):
        if not (args.push_to_hub and state.is_world_process_zero) or args.hub_strategy == HubStrategy.END:
            return
        name = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        checkpoint = Path(args.output_dir) / name
        if not is_complete_checkpoint(checkpoint):
            logger.warning("--push-to-hub: %s is not a complete checkpoint; not pushed", checkpoint)
            return
        if self.in_progress() and not args.hub_always_push:
            logger.info("--push-to-hub: the previous push is still running; %s is not pushed (--hub-always-push "
                        "queues every checkpoint)", name)
            return
        folder = {HubStrategy.CHECKPOINT: LAST_CHECKPOINT, HubStrategy.ALL_CHECKPOINTS: name}.get(args.hub_strategy)
        snapshot = self._snapshot(checkpoint, Path(args.output_dir) / UPLOAD_STAGING / name, folder, state)
        step = f"step {state.global_step}" if args.save_strategy == SaveStrategy.STEPS else f"epoch {int(state.epoch)}"
        future = self.api(args).upload_folder(
            repo_id=self.repo_id,
            folder_path=str(snapshot),
            commit_message=f"Training in progress, {step}",
            revision=args.hub_revision,
            delete_patterns=[f"{folder}/*"] if folder else None,  # files a previous save had and this one has not
            run_as_future=True,
        )
        future.add_done_callback(lambda done: self._finished(done, name, snapshot))
        self.pending.append(future)

    def on_train_end(self, args, state, control, **kwargs):
        self.wait()

    def api(self, args) -> HfApi:
        """One client for the run: its background pushes run one after another, in order."""
        if self._api is None:
            self._api = HfApi(token=args.hub_token)
        return self._api

    def in_progress(self) -> bool:
        return any(not future.done() for future in self.pending)

    def wait(self) -> None:
        """Wait for the background pushes (their failures are logged as they end)."""
        concurrent.futures.wait(self.pending)
        self.pending = []

    def _snapshot(self, checkpoint: Path, snapshot: Path, folder: str | None, state) -> Path:
        """The tree of one commit, as hard links to the checkpoint's files (copies where links are refused)."""
        shutil.rmtree(snapshot, ignore_errors=True)
        snapshot.mkdir(parents=True)
        for path in checkpoint.iterdir():
            if path.is_file() and not any(path.match(pattern) for pattern in RESUME_STATE_PATTERNS):
                _link(path, snapshot / path.name)
        self.write_card(snapshot, state)
        if folder:
            for path in checkpoint.rglob("*"):
                if path.is_file():
                    target = snapshot / folder / path.relative_to(checkpoint)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _link(path, target)
        return snapshot

    def _finished(self, future: concurrent.futures.Future, name: str, snapshot: Path) -> None:
        shutil.rmtree(snapshot, ignore_errors=True)
        error = future.exception()
        if error is not None:
            message = f"--push-to-hub: pushing {name} to {self.repo_id} failed ({type(error).__name__}: " \
                      f"{first_line(error, 300)})"
            self.failures.append(message)
            logger.error(message)
        else:
            logger.info("--push-to-hub: pushed %s to %s", name, self.repo_id)


def push_output_dir(output_dir: str | Path, repo_id: str, commit_message: str, token=None, revision=None):
    """The final push: the output folder as one commit (see :data:`FINAL_IGNORE_PATTERNS`). Raises
    :class:`UsageError` (one line, the local copy kept) when the upload fails."""
    try:
        return HfApi(token=token).upload_folder(repo_id=repo_id, folder_path=str(output_dir),
                                                commit_message=commit_message, revision=revision,
                                                ignore_patterns=list(FINAL_IGNORE_PATTERNS))
    except Exception as exc:  # HTTP errors (OSErrors) and the HTTP client's connection errors (not OSErrors)
        raise UsageError(f"--push-to-hub: pushing {output_dir} to {repo_id} failed ({type(exc).__name__}: "
                         f"{first_line(exc, 300)}); the model is saved in {output_dir}") from None


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
