"""Loading a saved checkpoint for evaluation or export: any ``save_pretrained`` folder whose config names its model
class in ``auto_map`` (remote code), with its tokenizer when the model reads captions; bad folders are one-line
:class:`~mmreid.errors.UsageError` s."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError, first_line

__all__ = ["load_checkpoint", "load_checkpoint_tokenizer", "safetensors_problem"]


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, read from its header alone (no tensor is loaded), or None: the file
    is an 8-byte header length, a JSON header, then the tensor bytes, which must end exactly where the header says.
    A copy or download cut short fails here, in one line, instead of deep inside the loader."""
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, shorter than a safetensors header"
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if 8 + header_len > size:
            return f"{size} bytes, but its header alone needs {8 + header_len}"
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a mapping of tensors"
    ends = [entry.get("data_offsets", [0, 0])[1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict)]
    expected = 8 + header_len + max(ends, default=0)
    if size != expected:
        return f"{size} bytes, its header describes {expected}"
    return None


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
    for weights in sorted(directory.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            raise UsageError(f"--model {path}: {weights.name} is incomplete or corrupt ({problem}); copy or save it "
                             "again")
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
