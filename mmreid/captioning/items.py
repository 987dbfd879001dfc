"""What to caption: the image triples of a raw release folder, grouped by caption split.

Captions are keyed by the raw image file name (the released files' ``item``), and query and
gallery share the ``test`` files, so the items come straight from the dataset builder's own
folder scan; this is also the order of work: the builder attaches the captions by the same names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..data.builder import (
    CAPTION_SPLIT_OF,
    LAYOUTS,
    MODALITIES,
    DatasetLayoutError,
    Layout,
    Triple,
    get_layout,
    load_triple,
    resolve_root,
    scan_split,
)


def find_layout(root: str | Path, name: Optional[str] = None) -> tuple[Layout, Path]:
    """The layout of ``root`` (given by ``name``, or recognised from its folders) and its base folder."""
    if name:
        layout = get_layout(name)
        return layout, resolve_root(layout, root)
    if not Path(root).expanduser().is_dir():
        raise DatasetLayoutError(f"--dataset {root}: folder does not exist")
    found = []
    for layout in LAYOUTS.values():
        try:
            found.append((layout, resolve_root(layout, root)))
        except DatasetLayoutError:
            continue
    if len(found) != 1:
        what = "no known layout" if not found else "several layouts (" + ", ".join(lay.name for lay, _ in found) + ")"
        raise DatasetLayoutError(
            f"--dataset {root}: found {what}; expected one of the release folders "
            f"({', '.join(LAYOUTS)}), or pass --name to say which"
        )
    return found[0]


def list_items(layout: Layout, base: Path, splits: Sequence[str] = ("train", "test"),
               skip_incomplete: bool = False) -> dict[str, list[Triple]]:
    """``{caption split: triples sorted by name}``; query and gallery are merged into ``test``."""
    out: dict[str, dict[str, Triple]] = {s: {} for s in splits}
    scanned: dict[str, list[Triple]] = {}
    for split, split_dir in layout.split_dirs.items():
        caption_split = CAPTION_SPLIT_OF[split]
        if caption_split not in out:
            continue
        if split_dir not in scanned:
            scanned[split_dir] = scan_split(layout, base / split_dir, skip_incomplete)
        for triple in scanned[split_dir]:
            out[caption_split].setdefault(triple.name, triple)
    return {s: [d[n] for n in sorted(d)] for s, d in out.items()}


def load_images(triple: Triple) -> dict[str, bytes]:
    """The encoded image of each modality (RGBNT100's side-by-side files cut into thirds)."""
    cells = load_triple(triple, allow_size_mismatch=True)
    return {m: cells[m]["bytes"] for m in MODALITIES}
