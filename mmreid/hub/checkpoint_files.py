"""What every model folder ``train.py`` saves carries beyond ``save_pretrained``'s files: the training arguments as
JSON (``training_args.json``, in place of the Trainer's pickled ``training_args.bin``), the model's whole code (every
module its ``auto_map`` names and their relative imports, whatever ``save_pretrained`` copied), and the checkpoint
pipeline (``pipeline_reid.py`` + its ``custom_pipelines`` entry in ``config.json``), so that
``AutoModel.from_pretrained(folder, trust_remote_code=True)`` and
``pipeline("image-feature-extraction", model=folder, trust_remote_code=True)`` work on any checkpoint."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from transformers.dynamic_module_utils import custom_object_save, get_relative_import_files
from transformers.trainer import TRAINING_ARGS_NAME

from pipeline_reid import ReIDFeatureExtractionPipeline, custom_pipelines_entry

__all__ = ["TRAINING_ARGS_JSON", "attach_pipeline", "complete_saved_model", "copy_model_code", "model_code_files",
           "share_weights"]

TRAINING_ARGS_JSON = "training_args.json"


def attach_pipeline(config) -> None:
    """Record the checkpoint pipeline in the model's config (``config.json``'s ``custom_pipelines``)."""
    config.custom_pipelines = custom_pipelines_entry()


def complete_saved_model(folder: str | Path, args, config=None) -> None:
    """Replace the pickled training arguments by JSON (tokens masked, as ``TrainingArguments.to_dict`` does), copy
    the model's whole code beside its weights (:func:`copy_model_code`) and, when the config names the checkpoint
    pipeline, the pipeline's code."""
    folder = Path(folder)
    pickled = folder / TRAINING_ARGS_NAME
    if pickled.is_file():
        os.remove(pickled)
    (folder / TRAINING_ARGS_JSON).write_text(args.to_json_string())
    if config is not None:
        copy_model_code(config, folder)
    if config is not None and getattr(config, "custom_pipelines", None) == custom_pipelines_entry():
        custom_object_save(ReIDFeatureExtractionPipeline, folder)


def model_code_files(config) -> list[Path]:
    """The code files of the model ``config`` belongs to: the module of its config class and every module its
    ``auto_map`` names (``"modeling_x.XModel"``), each with its relative imports, recursively.

    Why not only ``save_pretrained``'s copy: transformers copies the module of a class only when that class was
    registered (``register_for_auto_class``) in the process that saves. A model whose registration call sits in the
    user's script (as the transformers docs on custom models show), loaded back as remote code, has its config class
    re-registered by ``AutoConfig`` but not its model class, so its ``modeling_x.py`` would be left out. The modules
    live in one folder (the checkout, or transformers' module cache of the remote code), next to the config's."""
    module = sys.modules.get(type(config).__module__)
    if module is None or getattr(module, "__file__", None) is None:
        return []
    config_file = Path(module.__file__)
    names = {config_file.stem}
    for reference in (getattr(config, "auto_map", None) or {}).values():
        for item in reference if isinstance(reference, (list, tuple)) else [reference]:
            if isinstance(item, str) and "--" not in item and "." in item:  # "repo--module.Class": another repo's
                names.add(item.rsplit(".", 1)[0])
    files = []
    for name in sorted(names):
        path = config_file.parent / f"{name}.py"
        if path.is_file():
            files += [path, *(Path(f) for f in get_relative_import_files(path))]
    return list(dict.fromkeys(files))


def copy_model_code(config, folder: str | Path) -> list[Path]:
    """Copy :func:`model_code_files` into ``folder`` (those already there are replaced by the same code)."""
    copied = []
    for path in model_code_files(config):
        target = Path(folder) / path.name
        if path.resolve() != target.resolve():
            shutil.copyfile(path, target)
        copied.append(target)
    return copied


def share_weights(folder: str | Path) -> None:
    """Give the safetensors weights the permissions of every other file (0666 minus the umask): safetensors writes
    them through a private temporary file (mode 0600), which other users of a shared machine cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).glob("model*.safetensors"):
        os.chmod(path, 0o666 & ~umask)
