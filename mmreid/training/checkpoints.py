"""Checkpoint folders that are either complete or invisible, and the output-directory rules of ``train.py``.

A checkpoint is written under ``<output_dir>/.incomplete/checkpoint-N`` and renamed to ``<output_dir>/checkpoint-N``
only once every file of every process is in it (a rename within one file system is atomic). A run killed while it
writes leaves at most an ``.incomplete`` folder, which ``--resume`` skips and names.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from ..errors import UsageError, first_line

__all__ = [
    "CHECKPOINT_PATTERN",
    "STAGING_DIR",
    "check_resume_config",
    "check_resume_weights",
    "clear_previous_run",
    "find_resume_checkpoint",
    "incomplete_checkpoints",
    "is_complete_checkpoint",
    "previous_run_contents",
    "resolve_resume",
]

logger = logging.getLogger(__name__)

STAGING_DIR = ".incomplete"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# What the Trainer writes last into a checkpoint, and the weights (one file, or the index of a sharded save).
REQUIRED_FILES = ("trainer_state.json",)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")


def is_complete_checkpoint(folder: str | Path) -> bool:
    """A checkpoint folder with the trainer state and the weights in it."""
    folder = Path(folder)
    return (
        folder.is_dir()
        and all((folder / name).is_file() for name in REQUIRED_FILES)
        and any((folder / name).is_file() for name in WEIGHT_FILES)
    )


def _checkpoint_folders(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def incomplete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoints a stopped run left half-written: staged ones, and any ``checkpoint-N`` lacking its files."""
    output_dir = Path(output_dir)
    staged = _checkpoint_folders(output_dir / STAGING_DIR)
    return staged + [p for p in _checkpoint_folders(output_dir) if not is_complete_checkpoint(p)]


def find_resume_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir``, or None."""
    complete = [p for p in _checkpoint_folders(Path(output_dir)) if is_complete_checkpoint(p)]
    return complete[-1] if complete else None


def previous_run_contents(output_dir: str | Path) -> list[str]:
    """Names of what a previous run left in ``output_dir`` (a trained model, checkpoints), for the refusal message."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    held = [name for name in MODEL_FILES if (output_dir / name).is_file()]
    held += [p.name for p in _checkpoint_folders(output_dir)]
    if (output_dir / STAGING_DIR).is_dir():
        held.append(STAGING_DIR)
    return held


def clear_previous_run(output_dir: str | Path) -> list[str]:
    """Delete the checkpoints (complete and incomplete) of a previous run, so a later --resume cannot pick them up;
    returns the names of the folders deleted."""
    output_dir = Path(output_dir)
    deleted = []
    for folder in [*_checkpoint_folders(output_dir), output_dir / STAGING_DIR]:
        if folder.is_dir():
            shutil.rmtree(folder)
            deleted.append(folder.name)
    return deleted


def resolve_resume(output_dir: str | Path, resume: bool, resume_from_checkpoint: str | None,
                   overwrite_output_dir: bool) -> str | None:
    """The checkpoint a run continues from (or None), after checking ``output_dir`` against the flags.

    Raises :class:`UsageError`, before anything is written, when the folder holds a previous run and no flag says
    what to do with it, or when the flags contradict each other.
    """
    output_dir = Path(output_dir)
    if resume_from_checkpoint:
        checkpoint = Path(resume_from_checkpoint).expanduser()
        if not is_complete_checkpoint(checkpoint):
            raise UsageError(f"--resume-from-checkpoint {checkpoint}: not a complete checkpoint folder (expected "
                             "trainer_state.json and model.safetensors in it, as train.py writes checkpoint-N)")
        if resume:
            raise UsageError("--resume and --resume-from-checkpoint exclude each other: give one")
        return str(checkpoint)
    if resume:
        if overwrite_output_dir:
            raise UsageError("--resume and --overwrite-output-dir exclude each other: give one")
        for folder in incomplete_checkpoints(output_dir):
            logger.warning("--resume: skipping %s, a checkpoint the previous run did not finish writing", folder)
        checkpoint = find_resume_checkpoint(output_dir)
        if checkpoint is None:
            logger.warning("--resume: no complete checkpoint in %s; starting from scratch", output_dir)
            return None
        logger.warning("--resume: resuming from %s", checkpoint)
        return str(checkpoint)
    held = previous_run_contents(output_dir)
    if held and not overwrite_output_dir:
        raise UsageError(f"--output-dir {output_dir} already holds a previous run ({', '.join(held[:4])}); pass "
                         "--resume to continue it, --overwrite-output-dir to replace it, or another --output-dir")
    return None


# What makes a checkpoint's weights unusable for another run, read from the two configs (config.json): the model, the
# tower's shape, the input size (position table), the identities (classifier) and cameras (SIE table), and how the
# tower was tuned (a LoRA checkpoint's adapters fit only the same LoRA settings).
TOWER_SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "patch_size")


def _resume_fields(config: dict) -> dict:
    tower = config.get("vision_config") or {}
    fields = {"model": config.get("model_type")}
    fields.update({f"tower {key}": tower.get(key) for key in TOWER_SHAPE_FIELDS if key in tower})
    fields["image size"] = "x".join(str(v) for v in config["image_size"]) if config.get("image_size") else None
    fields["identities"] = len(config["id2label"]) if config.get("id2label") else config.get("num_labels")
    fields["cameras"] = config.get("num_cameras")
    # --tower-tuning and its LoRA numbers (mmreid.training.tuning); the adapted layers are compared with the
    # checkpoint's adapters once the model is built (require_lora_state)
    tuning = config.get("tower_tuning")
    if isinstance(tuning, dict):
        numbers = sorted((k, v) for k, v in tuning.items() if k not in ("mode", "target_modules"))
        fields["tower tuning"] = " ".join(f"{k}={v}" for k, v in [("mode", tuning.get("mode")), *numbers])
    else:
        fields["tower tuning"] = None
    return fields


def check_resume_config(checkpoint: str | Path, config) -> None:
    """Refuse, before any weights are loaded, to resume a run whose checkpoint was written for another model: one
    line naming what the checkpoint holds and what this run asks for (model type, tower shape, image size, number
    of identities or cameras). ``config``: the run's model config (a ``PretrainedConfig``)."""
    path = Path(checkpoint) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume: cannot read {path} ({first_line(exc)})") from None
    held, asked = _resume_fields(saved), _resume_fields(config.to_dict())
    differ = [key for key in asked if key in held and held[key] is not None and asked[key] is not None
              and held[key] != asked[key]]
    if differ:
        pairs = ", ".join(f"{key} {held[key]} vs {asked[key]}" for key in differ)
        raise UsageError(f"--resume: {checkpoint} was written by another run than the one asked for (checkpoint vs "
                         f"this run: {pairs}); resume with the options it was trained with, or train into another "
                         "--output-dir")


def check_resume_weights(checkpoint: str | Path, model) -> None:
    """Refuse to resume when the checkpoint's weights do not fit ``model`` (names and shapes, read from the
    safetensors headers without loading a tensor): what the config fields of :func:`check_resume_config` leave
    out (e.g. a head switched off). One line with the first differences."""
    from safetensors import safe_open

    folder = Path(checkpoint)
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else \
        ["model.safetensors"]
    held = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            held.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
    wanted = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    unexpected = sorted(set(held) - set(wanted))
    missing = sorted(set(wanted) - set(held) - set(_shared_keys(model)))
    reshaped = sorted(key for key in set(held) & set(wanted) if held[key] != wanted[key])
    problems = [f"{key} {held[key]} vs {wanted[key]}" for key in reshaped[:3]]
    problems += [f"not in this model: {', '.join(unexpected[:3])}"] if unexpected else []
    problems += [f"not in the checkpoint: {', '.join(missing[:3])}"] if missing else []
    if problems:
        raise UsageError(f"--resume: the weights of {checkpoint} do not fit the model this run builds "
                         f"({'; '.join(problems)}); resume with the options it was trained with, or train into "
                         "another --output-dir")


def _shared_keys(model) -> list[str]:
    """Parameters stored once in a saved file (tied weights): absent from the checkpoint by design."""
    seen, shared = {}, []
    for key, value in model.state_dict().items():
        pointer = (value.data_ptr(), value.shape, value.stride()) if value.numel() else None
        if pointer is not None and pointer in seen:
            shared.append(key)
        elif pointer is not None:
            seen[pointer] = key
    return shared
