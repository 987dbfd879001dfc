"""16-bit and 32-bit images (thermal cameras write 16-bit PNG / TIFF) to 8 bits, one rule for the dataset builder,
the collator and the checkpoint's processor (``image_processing_reid.py`` holds the same rule: a checkpoint's code
imports nothing from here).

The rule is **min-max per image**: the image's lowest value becomes 0 and its highest 255, linearly, as thermal
viewers' linear automatic gain control does. A thermal camera's raw counts fill a narrow band of the 16-bit range
(a scene at 10-40 degrees C spans a few thousand of 65,536 levels), so scaling by the full range would give an
almost uniform grey, and PIL's own ``convert("RGB")`` clips every value above 255 to white (99.6 % of the pixels of
a typical 16-bit frame). Per-image scaling keeps the contrast; the absolute temperature is not kept (the 8-bit
RGB / NIR images the models see carry none either). A constant image becomes black.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["HIGH_BIT_MODES", "rescale_to_8bit", "to_8bit"]

# PIL modes of more than 8 bits per pixel: 16-bit unsigned, 32-bit signed, 32-bit float.
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def rescale_to_8bit(values: np.ndarray, what: str = "image") -> np.ndarray:
    """A 2-D (or H x W x C) array of any numeric type -> uint8 by its own min and max (see the module docstring).
    Raises ValueError on NaN or infinite values."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{what}: holds NaN or infinite pixel values")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def to_8bit(img: Image.Image, what: str = "image") -> Image.Image:
    """``img`` itself when it has 8 bits per channel; a 16 / 32-bit one as an 8-bit grey image, scaled min-max."""
    if img.mode not in HIGH_BIT_MODES:
        return img
    return Image.fromarray(rescale_to_8bit(np.asarray(img), what), mode="L")
