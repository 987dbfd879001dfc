"""The column names of a ReID dataset (docs/interfaces.md, "Dataset"), defined once for the builder, the collator,
evaluation and embedding."""

from __future__ import annotations

from configuration_reid import MODALITIES

MODALITY_COLUMNS = MODALITIES  # image columns, in the batch's modality order: RGB, NIR, TIR
CAPTION_COLUMNS = tuple(f"caption_{m}" for m in MODALITY_COLUMNS)  # one caption per modality image
