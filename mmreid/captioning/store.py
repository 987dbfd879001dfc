"""The caption folder on disk: the released ``{train,test}_{RGB,NI,TI}.json`` files, plus
``generation.json`` (the settings that made them) and ``attributes/{split}_NNNNN.json`` (per
saved chunk: raw answers and merged attributes with their confidences, for inspection).

Every file is written whole to a temporary sibling and renamed over the old one
(``os.replace`` is atomic), so a killed run leaves the previous complete version, never a
half-written file; the temporaries a kill can leave behind are removed by the next run.
An item counts as done when all three modality files of its split hold it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

from ..data.builder import CAPTION_FILE_TAGS, MODALITIES, DatasetLayoutError, read_caption_file

MANIFEST = "generation.json"
ATTRIBUTES_DIR = "attributes"
_TMP_MARK = ".tmp-"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: mkstemp creates 0600 files, the results should get the usual mode

CaptionSplit = dict[str, dict[str, str]]  # modality -> item -> caption


def caption_path(folder: Path, split: str, modality: str) -> Path:
    return folder / f"{split}_{CAPTION_FILE_TAGS[modality]}.json"


def atomic_write_json(path: Path, data) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP_MARK}", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=4, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files a killed run may have left (only ours: ``.<name>.tmp-*``)."""
    removed = 0
    for sub in (folder, folder / ATTRIBUTES_DIR):
        if sub.is_dir():
            for p in sub.glob(f".*{_TMP_MARK}*"):
                if p.is_file():
                    p.unlink()
                    removed += 1
    return removed


def read_split(folder: Path, split: str) -> CaptionSplit:
    """The captions already in ``folder`` for one split (empty where a file does not exist yet)."""
    out: CaptionSplit = {}
    for modality in MODALITIES:
        path = caption_path(folder, split, modality)
        out[modality] = read_caption_file(path) if path.is_file() else {}
    return out


def done_items(captions: CaptionSplit) -> set[str]:
    per_modality = [set(captions.get(m, {})) for m in MODALITIES]
    return set.intersection(*per_modality) if per_modality else set()


def write_split(folder: Path, split: str, captions: CaptionSplit) -> None:
    """Write the three caption files of one split, items sorted by name."""
    for modality in MODALITIES:
        items = captions.get(modality, {})
        atomic_write_json(caption_path(folder, split, modality),
                          [{"item": k, "description": items[k]} for k in sorted(items)])


def _attribute_chunks(folder: Path, split: str) -> list[Path]:
    return sorted((folder / ATTRIBUTES_DIR).glob(f"{split}_[0-9][0-9][0-9][0-9][0-9].json"))


def read_attributes(folder: Path, split: str) -> dict:
    """``{item: record}`` from all saved chunks of a split; a later chunk wins for an item."""
    out: dict = {}
    for path in _attribute_chunks(folder, split):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetLayoutError(f"{path}: not readable JSON ({exc})") from None
        if isinstance(data, dict):
            out.update(data)
    return out


def write_attributes(folder: Path, split: str, records: Mapping[str, dict]) -> Path:
    """Save the records of one chunk as the next ``attributes/<split>_NNNNN.json``: each chunk
    is written once, so a long run never rewrites the (large) raw answers."""
    chunks = _attribute_chunks(folder, split)
    index = int(chunks[-1].stem.rsplit("_", 1)[1]) + 1 if chunks else 0
    path = folder / ATTRIBUTES_DIR / f"{split}_{index:05d}.json"
    atomic_write_json(path, {k: records[k] for k in sorted(records)})
    return path


def check_manifest(folder: Path, settings: Mapping) -> None:
    """Refuse to add captions made with other settings (or by other means) to ``folder``."""
    path = folder / MANIFEST
    has_captions = any(caption_path(folder, s, m).exists() for s in ("train", "test") for m in MODALITIES)
    if not path.is_file():
        if has_captions:
            raise DatasetLayoutError(
                f"--output {folder}: holds caption files but no {MANIFEST}, so they were not written by this "
                "command; choose another --output"
            )
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetLayoutError(f"{path}: not readable JSON ({exc})") from None
    diff = [k for k in settings if old.get(k) != settings[k]]
    if diff:
        detail = "; ".join(f"{k}: {old.get(k)!r} there, {settings[k]!r} now" for k in diff)
        raise DatasetLayoutError(
            f"--output {folder} was generated with other settings ({detail}); resume with the same "
            "settings or choose another --output"
        )


def write_manifest(folder: Path, settings: Mapping) -> None:
    atomic_write_json(folder / MANIFEST, dict(settings))
