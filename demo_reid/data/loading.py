"""Open a dataset built by ``data_scripts/build_dataset.py`` and check it has the splits and columns training and
evaluation read (``docs/interfaces.md``): from a local ``save_to_disk`` folder, or from the Hub by dataset id."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import datasets

from .collate import MODALITY_COLUMNS

REQUIRED_COLUMNS = (*MODALITY_COLUMNS, "pid", "camid", "sceneid", "name")
REQUIRED_SPLITS = ("train", "query", "gallery")


def load_reid_dataset(path: str | Path, splits: Sequence[str] = REQUIRED_SPLITS) -> datasets.DatasetDict:
    """``load_from_disk`` a dataset built by ``build_dataset`` and check its splits and columns."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist (build it with data_scripts/build_dataset.py)")
    try:
        dsdict = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise ValueError(f"{path} is not a dataset saved with save_to_disk ({exc})") from None
    return check_reid_dataset(dsdict, path, splits)


def open_reid_dataset(source: str | Path, splits: Sequence[str] = REQUIRED_SPLITS,
                      revision: Optional[str] = None) -> datasets.DatasetDict:
    """A local ``save_to_disk`` folder (:func:`load_reid_dataset`) or a Hub dataset id (``datasets.load_dataset`` at
    ``revision``: a branch, tag or commit sha), with the same checks either way.

    Why one entry point: the command-line tools take either, and a path that does not exist must not silently
    become a Hub request for a mistyped folder, so a source that looks like a path (``./``, ``/``, ``~``, a file
    separator beyond the one of ``user/name``) is read as one. A revision only makes sense on the Hub.
    """
    text = str(source)
    if Path(text).expanduser().exists() or not _looks_like_repo_id(text):
        if revision is not None:
            raise ValueError(f"revision {revision!r} applies to Hub dataset ids, not to the local folder {text}")
        return load_reid_dataset(text, splits)
    try:
        dsdict = datasets.load_dataset(text, revision=revision)
    except (OSError, ValueError) as exc:  # not found, offline, unknown revision (HTTP errors are OSErrors)
        from ..errors import first_line

        raise FileNotFoundError(f"{text} is neither a local folder nor a Hub dataset that loads "
                                f"({type(exc).__name__}: {first_line(exc, 200)})") from None
    return check_reid_dataset(dsdict, f"{text}@{revision}" if revision else text, splits)


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not text.startswith((".", "~")) and "\\" not in text


def check_reid_dataset(dsdict, where, splits: Sequence[str] = REQUIRED_SPLITS) -> datasets.DatasetDict:
    """The splits exist and hold the columns every consumer reads, with images as ``datasets.Image()``."""
    if not isinstance(dsdict, datasets.DatasetDict):
        raise ValueError(f"{where} holds a single Dataset; expected a DatasetDict with splits {list(splits)}")
    missing = [s for s in splits if s not in dsdict]
    if missing:
        raise ValueError(f"{where}: missing split(s) {missing}; found {list(dsdict)}")
    for split in splits:
        ds = dsdict[split]
        need = REQUIRED_COLUMNS + (("label",) if split == "train" else ())
        lacking = [c for c in need if c not in ds.column_names]
        if lacking:
            raise ValueError(f"{where}: split {split!r} lacks column(s) {lacking}; has {ds.column_names}")
        not_images = [c for c in MODALITY_COLUMNS if not isinstance(ds.features[c], datasets.Image)]
        if not_images:
            raise ValueError(f"{where}: split {split!r} column(s) {not_images} are not datasets.Image()")
    return dsdict
