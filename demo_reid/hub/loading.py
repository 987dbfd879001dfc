"""Loading a saved checkpoint for evaluation or export: any ``save_pretrained`` folder whose config names its model
class in ``auto_map`` (remote code), with its tokenizer when the model reads captions; bad folders are one-line
:class:`~demo_reid.errors.UsageError` s."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError, first_line

__all__ = ["load_checkpoint", "load_checkpoint_tokenizer"]


def load_checkpoint(path: str):
    """``AutoModel.from_pretrained(path, trust_remote_code=True)`` after checking the folder holds such a model."""
    from transformers import AutoModel

    directory = Path(path).expanduser()
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise UsageError(f"--model {path}: no config.json there; pass a directory written by save_pretrained "
                         "(e.g. the --output-dir of train.py)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise UsageError(f"--model {path}: config.json is not valid JSON ({first_line(exc)})") from None
    if "AutoModel" not in (config.get("auto_map") or {}):
        raise UsageError(f"--model {path}: config.json has no auto_map for AutoModel, so its modeling code does not "
                         "travel with it; re-save it with save_pretrained from this repository (or register the "
                         "model class with register_for_auto_class('AutoModel') before saving)")
    try:
        return AutoModel.from_pretrained(str(directory), trust_remote_code=True)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--model {path}: the checkpoint does not load ({first_line(exc, 160)})") from None


def load_checkpoint_tokenizer(path: str, model):
    """The tokenizer saved beside a text-conditioned checkpoint (None for image-only models)."""
    if not getattr(model.config, "uses_text", False):
        return None
    from transformers import AutoTokenizer

    try:
        # trust_remote_code: AutoTokenizer reads config.json, whose model class is the checkpoint's own code
        return AutoTokenizer.from_pretrained(str(Path(path).expanduser()), trust_remote_code=True)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--model {path}: the model reads captions but no tokenizer loads from that directory "
                         f"({first_line(exc, 120)}); train.py saves it beside the weights") from None
