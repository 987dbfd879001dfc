"""Data with missing modalities: rows whose ``rgb``, ``nir`` or ``tir`` image is ``None`` (a user's RGB-only or
RGB + TIR data), or folders of images lacking a modality sub-folder.

Why rows with missing images are fine: every model of the contract takes ``modality_mask`` (B, 3), False = missing,
and leaves such a modality out; the collator zero-fills the missing image and passes the mask (only in batches that
have a missing image, so complete data trains exactly as before). What the DeMo / NEXT authors advise instead for data
with fewer modalities is to repeat the RGB image into the others: ``--fill-missing-modalities rgb`` does that, in
the collator, and is recorded in the model's config (``fill_missing_modalities``) so that evaluation and embedding
of the checkpoint fill the same way.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from .columns import MODALITY_COLUMNS

logger = logging.getLogger(__name__)

__all__ = ["FILL_CONFIG_KEY", "FILL_HELP", "FILL_MODES", "announce_missing", "check_fill_mode",
           "check_rows_have_an_image", "handling_note", "is_missing", "rows_left_without_image", "missing_counts", "missing_modality_notice",
           "say_once"]

# --fill-missing-modalities: one definition for train.py and eval.py.
FILL_MODES = ("none", "rgb")
FILL_CONFIG_KEY = "fill_missing_modalities"  # the model config field that records it (config.json)
FILL_HELP = ("What a missing modality image (None in the rgb / nir / tir column, or a missing modality sub-folder) "
             "becomes: none = left out through modality_mask (the model ignores that modality for that sample); rgb "
             "= the RGB image repeated into it, as the DeMo / NEXT authors advise for data with fewer modalities. "
             "Recorded in the model's config.json, so eval.py and embed.py fill as the model was trained.")
_NAMES = {"rgb": "RGB", "nir": "NIR", "tir": "TIR"}


def check_fill_mode(value: Optional[str], option: str = "--fill-missing-modalities") -> str:
    """``value`` as a fill mode (``None`` = "none"), or a one-line ValueError naming ``option``."""
    mode = "none" if value is None else str(value).lower()
    if mode not in FILL_MODES:
        raise ValueError(f"{option} {value!r}: expected one of {', '.join(FILL_MODES)}")
    return mode


def is_missing(value: Any) -> bool:
    """A row's image cell holds no image: ``None``, or an Image() cell dict with neither bytes nor a path."""
    if value is None:
        return True
    if isinstance(value, Mapping):
        return value.get("bytes") is None and value.get("path") is None
    return False


def _null_masks(split) -> dict[str, Any]:
    """Per modality column, a pyarrow boolean array (True = no image), read from Arrow without decoding images."""
    import pyarrow.compute as pc

    table = split.select_columns(list(MODALITY_COLUMNS)).with_format("arrow")[:]
    masks = {}
    for column in MODALITY_COLUMNS:
        values = table.column(column)
        missing = pc.is_null(values)
        if hasattr(values.type, "get_field_index") and values.type.get_field_index("bytes") >= 0:
            empty = pc.and_(pc.is_null(pc.struct_field(values, "bytes")), pc.is_null(pc.struct_field(values, "path")))
            missing = pc.or_(missing, pc.fill_null(empty, True))
        masks[column] = missing
    return masks


def _count(mask) -> int:
    """True values of a pyarrow boolean (chunked) array."""
    import pyarrow.compute as pc

    return int(pc.sum(mask).as_py() or 0)


def missing_counts(split) -> dict[str, int]:
    """Rows without an image, per modality column (``{"rgb": 0, "nir": 120, ...}``)."""
    if len(split) == 0:
        return {c: 0 for c in MODALITY_COLUMNS}
    return {c: _count(m) for c, m in _null_masks(split).items()}


def check_rows_have_an_image(split, where: str) -> None:
    """Every row holds at least one image; else a one-line ValueError naming ``where`` and a row."""
    import pyarrow.compute as pc

    if len(split) == 0:
        return
    masks = _null_masks(split)
    none = pc.and_(pc.and_(masks["rgb"], masks["nir"]), masks["tir"])
    count = _count(none)
    if count:
        first = int(pc.index(none, True).as_py())
        name = split[first]["name"] if "name" in split.column_names else f"row {first}"
        raise ValueError(f"{where}: {count} row(s) have no image in any modality (e.g. {name!r}); drop them, or give "
                         "each row at least one of rgb, nir, tir")


def missing_modality_notice(splits: Mapping[str, Any], where: str) -> Optional[str]:
    """One line naming the modalities missing in every row of ``splits`` (``{name: Dataset}``) and how many rows
    lack the others, or None when every row is complete."""
    counts = {name: missing_counts(split) for name, split in splits.items()}
    everywhere = [c for c in MODALITY_COLUMNS
                  if all(counts[s][c] == len(splits[s]) for s in splits) and any(len(x) for x in splits.values())]
    partly = {c: sum(counts[s][c] for s in splits) for c in MODALITY_COLUMNS if c not in everywhere}
    partly = {c: n for c, n in partly.items() if n}
    if not everywhere and not partly:
        return None
    parts = []
    if everywhere:
        parts.append(f"no {' and no '.join(_NAMES[c] for c in everywhere)} image in any row")
    if partly:
        rows = sum(len(x) for x in splits.values())
        parts.append(", ".join(f"{_NAMES[c]} missing in {n} of {rows} rows" for c, n in partly.items()))
    return f"{where} ({', '.join(splits)}): {'; '.join(parts)}"


def rows_left_without_image(split, keep: tuple[bool, bool, bool], fill: Optional[str] = None) -> int:
    """Rows that would have no image when only the modalities ``keep`` marks (RGB, NIR, TIR) are used (the
    missing-modality settings of evaluation), after filling from RGB with ``fill`` "rgb"."""
    import pyarrow.compute as pc

    if len(split) == 0:
        return 0
    missing = _null_masks(split)
    present = {c: pc.invert(missing[c]) for c in MODALITY_COLUMNS}
    if check_fill_mode(fill) == "rgb":
        present = {c: pc.or_(v, present["rgb"]) for c, v in present.items()}
    kept = [present[c] for c, k in zip(MODALITY_COLUMNS, keep) if k]
    if not kept:
        return len(split)
    left = kept[0]
    for more in kept[1:]:
        left = pc.or_(left, more)
    return len(split) - _count(left)


def handling_note(fill: Optional[str]) -> str:
    """How the run treats the missing images, for :func:`announce_missing`."""
    if check_fill_mode(fill) == "rgb":
        return "the RGB image is repeated into them (fill_missing_modalities rgb)"
    return ("they are left out through modality_mask (--fill-missing-modalities rgb repeats the RGB image into them "
            "instead)")


def announce_missing(splits: Mapping[str, Any], where: str, note: str, fill: Optional[str] = None) -> None:
    """Say once, at the start, which modalities the data lacks (nothing when every row is complete), followed by
    ``note`` (how they are treated). Filling from RGB when no row has an RGB image is refused (ValueError)."""
    if check_fill_mode(fill) == "rgb" and splits and all(missing_counts(x)["rgb"] == len(x) for x in splits.values()):
        raise ValueError(f"{where}: --fill-missing-modalities rgb, but no row has an RGB image to repeat; use none")
    notice = missing_modality_notice(splits, where)
    if notice is not None:
        say_once(f"{notice}: {note}")


def say_once(message: str) -> None:
    """Log ``message`` once per launch (on the main process only), as a warning: it shows without logging set up."""
    from accelerate import PartialState

    if PartialState().is_main_process:
        logger.warning(message)
