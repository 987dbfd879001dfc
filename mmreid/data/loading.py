"""Open a dataset built by ``data_scripts/build_dataset.py`` and check it has the splits and columns training and
evaluation read (``docs/interfaces.md``): from a local ``save_to_disk`` folder, or from the Hub by dataset id."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import datasets

from .columns import MODALITY_COLUMNS
from .missing import check_rows_have_an_image

REQUIRED_COLUMNS = (*MODALITY_COLUMNS, "pid", "camid", "sceneid", "name")
REQUIRED_SPLITS = ("train", "query", "gallery")
HUB_CHECK_TIMEOUT_S = 10.0  # the one request asking the Hub whether a dataset id exists


def load_reid_dataset(path: str | Path, splits: Sequence[str] = REQUIRED_SPLITS) -> datasets.DatasetDict:
    """``load_from_disk`` a dataset built by ``build_dataset`` and check its splits and columns."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such folder: dataset {path} does not exist{_close_names(path)} (build it with "
                                "data_scripts/build_dataset.py)")
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
    become a Hub request for a mistyped folder (which ``load_dataset`` retries for half a minute), so a source that
    looks like a path (``./``, ``/``, ``~``, a file separator beyond the one of ``user/name``, or a ``user`` part
    that is a local folder) is read as one and fails at once. A ``user/name`` is first asked of the Hub once (at
    once "not found" offline), then loaded. A revision only makes sense on the Hub.
    """
    text = str(source)
    if Path(text).expanduser().exists() or not _looks_like_repo_id(text) or _first_part_is_local(text):
        if revision is not None:
            raise ValueError(f"revision {revision!r} applies to Hub dataset ids, not to the local folder {text}")
        return load_reid_dataset(text, splits)
    _check_on_the_hub(text, revision)
    try:
        dsdict = datasets.load_dataset(text, revision=revision)
    except (OSError, ValueError) as exc:  # not found, offline, unknown revision (HTTP errors are OSErrors)
        raise _not_found(text, exc) from None
    return check_reid_dataset(dsdict, f"{text}@{revision}" if revision else text, splits)


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not text.startswith((".", "~")) and "\\" not in text


def _first_part_is_local(text: str) -> bool:
    """``data/rgbnt20l`` where ``data`` is a local folder: a mistyped path, not a Hub id."""
    return "/" in text and Path(text.split("/")[0]).is_dir()


def _close_names(path: Path) -> str:
    """", did you mean X?" from the names beside ``path`` when one is close (a typo), else ""."""
    import difflib

    parent = path.parent if str(path.parent) else Path(".")
    try:
        names = [p.name for p in parent.iterdir()] if parent.is_dir() else []
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1)
    return f" (did you mean {parent / close[0]}?)" if close else ""


def _not_found(text: str, exc: BaseException) -> FileNotFoundError:
    from ..errors import first_line

    return FileNotFoundError(f"{text} is neither a local folder nor a Hub dataset that loads "
                             f"({type(exc).__name__}: {first_line(exc, 200)})")


def _check_on_the_hub(repo_id: str, revision: Optional[str]) -> None:
    """One request for the dataset's info (no retries): a typo or an unreachable Hub is one line in about a second,
    not ``load_dataset``'s half-minute of retries. Offline (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) the id is
    looked up in the local cache only, so nothing is asked here."""
    if datasets.config.HF_HUB_OFFLINE:
        return  # load_dataset reads the cache and fails at once when the id is not there
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(repo_id, revision=revision, timeout=HUB_CHECK_TIMEOUT_S)
    except Exception as exc:  # HTTP errors (404, 401, ...), connection refused, timeout, bad id: all one line
        raise _not_found(repo_id, exc) from None


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
            hint = ("; a modality the data does not have is a column of None (docs/datasets.md, \"Missing modalities\")"
                    if set(lacking) & set(MODALITY_COLUMNS) else "")
            raise ValueError(f"{where}: split {split!r} lacks column(s) {lacking}; has {ds.column_names}{hint}")
        not_images = [c for c in MODALITY_COLUMNS if not isinstance(ds.features[c], datasets.Image)]
        if not_images:
            raise ValueError(f"{where}: split {split!r} column(s) {not_images} are not datasets.Image()")
        check_rows_have_an_image(ds, f"{where}: split {split!r}")
    return dsdict
