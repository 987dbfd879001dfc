"""What ``data_scripts/embed.py --dataset`` reads: one split of a dataset built by ``build_dataset.py`` (a local
``save_to_disk`` folder or a Hub dataset id), or a folder of image triples in a release layout, read in place.

Why folders are read in place (file paths cast to ``datasets.Image``) instead of through ``build_dataset``: a
collection to embed has no train split and may hold a million triples; nothing is copied or decoded up front.
File names that the layout cannot parse get ``pid`` / ``camid`` / ``sceneid`` -1 (no labels needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import datasets

from ..data.builder import IMAGE_SUFFIXES, LAYOUTS, DatasetLayoutError, Layout, Triple, get_layout, load_triple
from ..data.collate import MODALITY_COLUMNS
from ..data.loading import open_reid_dataset
from ..data.missing import announce_missing
from ..errors import UsageError, first_line

__all__ = ["open_collection", "read_triple_folder"]

METADATA_COLUMNS = ("pid", "camid", "sceneid", "name")


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def open_collection(source: str, split: str = "gallery", layout: Optional[str] = None,
                    revision: Optional[str] = None) -> datasets.Dataset:
    """The rows to embed (image columns ``rgb``, ``nir``, ``tir`` and the metadata columns), as one Dataset."""
    path = Path(source).expanduser()
    if path.is_dir() and not _is_saved_dataset(path):
        if revision is not None:
            raise UsageError(f"--dataset-revision applies to a Hub --dataset, not to the folder {source}")
        rows = read_triple_folder(path, split, layout)
    else:
        try:
            rows = open_reid_dataset(source, splits=(split,), revision=revision)[split]
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(f"--dataset {source}: {first_line(exc, 300)}") from None
    announce_missing({split: rows}, f"--dataset {source}", "the checkpoint's fill_missing_modalities decides: left "
                     "out through modality_mask (the default), or the RGB image repeated into them")
    return rows


def _layouts_for(folder: Path) -> list[Layout]:
    """Layouts whose modality sub-folders sit in ``folder`` (or, for nested layouts, in its sub-folders); a folder
    holding only some of them fits too (data without a modality: its rows get None there)."""
    found = []
    for layout in LAYOUTS.values():
        if layout.modality_dirs is None:
            continue
        groups = [folder] if not layout.nested else [d for d in folder.iterdir() if d.is_dir()]
        if any(any((g / m).is_dir() for m in layout.modality_dirs) for g in groups):
            found.append(layout)
    return found


def _split_folder(folder: Path, split: str, layout: Optional[Layout]) -> tuple[Path, Layout]:
    """The folder holding the triples and its layout: ``folder`` itself, or the split's folder of a release root."""
    def release_split(lay: Layout) -> Optional[Path]:
        for base in [folder / f for f in lay.folders] + [folder]:
            sub = base / lay.split_dirs.get(split, "")
            if sub != base and sub.is_dir() and (lay.modality_dirs is None or lay in _layouts_for(sub)):
                return sub
        return None

    if layout is not None:
        return release_split(layout) or folder, layout
    here = _layouts_for(folder)
    if len(here) == 1:
        return folder, here[0]
    roots = [(sub, lay) for lay in LAYOUTS.values() if lay.modality_dirs is not None
             for sub in [release_split(lay)] if sub is not None]
    if len(roots) == 1 and not here:
        return roots[0]
    fits = here or [lay for _, lay in roots]
    if not fits:
        raise UsageError(f"--dataset {folder}: neither a saved dataset nor a folder of image triples (expected a "
                         "release root, or RGB/NI/TI or vis/ni/th sub-folders); pass --layout RGBNT100 for "
                         "side-by-side images")
    raise UsageError(f"--dataset {folder}: the folder fits the layouts {', '.join(x.name for x in fits)}; pass "
                     "--layout to choose one")


def _parse(layout: Layout, name: str) -> tuple[int, int, int]:
    try:
        parsed = layout.parse_name(name)
    except DatasetLayoutError:
        return -1, -1, -1
    return parsed.pid, parsed.camid, parsed.sceneid


def _image_files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES}


def read_triple_folder(folder: Path, split: str = "gallery", layout: Optional[str] = None) -> datasets.Dataset:
    """A folder of image triples as a Dataset (one-line error if it holds none). A modality whose file or whole
    sub-folder is missing is None in that row: the collator leaves it out through ``modality_mask``."""
    chosen = get_layout(layout) if layout else None
    split_dir, lay = _split_folder(Path(folder), split, chosen)
    rows = {c: [] for c in (*MODALITY_COLUMNS, *METADATA_COLUMNS)}
    groups = sorted(d for d in split_dir.iterdir() if d.is_dir()) if lay.nested else [split_dir]
    for group in groups:
        if lay.modality_dirs is None:  # RGBNT100: one file holds the three images side by side
            for name, path in sorted(_image_files(group).items()):
                cells = load_triple(Triple(name, (path,), -1, -1, -1))
                for c in MODALITY_COLUMNS:
                    rows[c].append(cells[c])
                _append_ids(rows, lay, name)
            continue
        files = [_image_files(group / m) if (group / m).is_dir() else {} for m in lay.modality_dirs]
        for name in sorted(set().union(*files)):  # a modality without its file (or sub-folder) is None
            for c, f in zip(MODALITY_COLUMNS, files):
                rows[c].append({"path": str(f[name]), "bytes": None} if name in f else None)
            _append_ids(rows, lay, name)
    if not rows["name"]:
        raise UsageError(f"--dataset {folder}: no {lay.name} image in {split_dir}")
    features = datasets.Features({**{c: datasets.Image() for c in MODALITY_COLUMNS},
                                  "pid": datasets.Value("int64"), "camid": datasets.Value("int64"),
                                  "sceneid": datasets.Value("int64"), "name": datasets.Value("string")})
    return datasets.Dataset.from_dict(rows, features=features)


def _append_ids(rows: dict, layout: Layout, name: str) -> None:
    pid, camid, sceneid = _parse(layout, name)
    rows["pid"].append(pid)
    rows["camid"].append(camid)
    rows["sceneid"].append(sceneid)
    rows["name"].append(name)
