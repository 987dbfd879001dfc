"""What every model folder ``train.py`` saves carries beyond ``save_pretrained``'s files: the training arguments as
JSON (``training_args.json``, in place of the Trainer's pickled ``training_args.bin``) and the checkpoint pipeline
(``pipeline_reid.py`` + its ``custom_pipelines`` entry in ``config.json``), so that
``pipeline("image-feature-extraction", model=folder, trust_remote_code=True)`` works on any checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from transformers.dynamic_module_utils import custom_object_save
from transformers.trainer import TRAINING_ARGS_NAME

from pipeline_reid import ReIDFeatureExtractionPipeline, custom_pipelines_entry

__all__ = ["TRAINING_ARGS_JSON", "attach_pipeline", "complete_saved_model", "share_weights"]

TRAINING_ARGS_JSON = "training_args.json"


def attach_pipeline(config) -> None:
    """Record the checkpoint pipeline in the model's config (``config.json``'s ``custom_pipelines``)."""
    config.custom_pipelines = custom_pipelines_entry()


def complete_saved_model(folder: str | Path, args, config=None) -> None:
    """Replace the pickled training arguments by JSON (tokens masked, as ``TrainingArguments.to_dict`` does) and,
    when the config names the checkpoint pipeline, copy its code beside the model's."""
    folder = Path(folder)
    pickled = folder / TRAINING_ARGS_NAME
    if pickled.is_file():
        os.remove(pickled)
    (folder / TRAINING_ARGS_JSON).write_text(args.to_json_string())
    if config is not None and getattr(config, "custom_pipelines", None) == custom_pipelines_entry():
        custom_object_save(ReIDFeatureExtractionPipeline, folder)


def share_weights(folder: str | Path) -> None:
    """Give the safetensors weights the permissions of every other file (0666 minus the umask): safetensors writes
    them through a private temporary file (mode 0600), which other users of a shared machine cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).glob("model*.safetensors"):
        os.chmod(path, 0o666 & ~umask)
