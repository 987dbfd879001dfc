"""Open a dataset built by ``data_scripts/build_dataset.py`` and check it has the splits and columns training and
evaluation read (``docs/interfaces.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

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
    if not isinstance(dsdict, datasets.DatasetDict):
        raise ValueError(f"{path} holds a single Dataset; expected a DatasetDict with splits {list(splits)}")
    missing = [s for s in splits if s not in dsdict]
    if missing:
        raise ValueError(f"{path}: missing split(s) {missing}; found {list(dsdict)}")
    for split in splits:
        ds = dsdict[split]
        need = REQUIRED_COLUMNS + (("label",) if split == "train" else ())
        lacking = [c for c in need if c not in ds.column_names]
        if lacking:
            raise ValueError(f"{path}: split {split!r} lacks column(s) {lacking}; has {ds.column_names}")
        not_images = [c for c in MODALITY_COLUMNS if not isinstance(ds.features[c], datasets.Image)]
        if not_images:
            raise ValueError(f"{path}: split {split!r} column(s) {not_images} are not datasets.Image()")
    return dsdict
