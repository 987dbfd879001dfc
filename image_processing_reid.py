"""Image processor of the ReID family's checkpoints (DeMo, NEXT, any model on the family base): image triples ->
``pixel_values``.

Ships with every checkpoint (``AutoImageProcessor.from_pretrained(checkpoint, trust_remote_code=True)``), so turning
three pictures of one object into model inputs needs nothing from this repository. It applies the evaluation
transform of ``eval.py``: bilinear resize to the model's input size, scale to [0, 1], normalise with the model's
``image_mean`` / ``image_std`` (saved in the checkpoint's processor config; mean = std = 0.5, the authors' CLIP
recipe, by default).
The training-time transform (bicubic resize, augmentation) stays in the training library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import PILImageResampling

try:  # loaded as a checkpoint's remote code (a package) or from a checkout of the repository
    from .configuration_reid import MODALITIES
except ImportError:
    from configuration_reid import MODALITIES


class ReIDImageProcessor(PilBackend):
    r"""
    Turns one triple of images (RGB, near-infrared, thermal-infrared) or a batch of triples into the model's
    `pixel_values` of shape `(batch_size, 3, 3, height, width)` and `modality_mask` of shape `(batch_size, 3)`.

    Each image may be a PIL image, a NumPy array or a torch tensor (channels first or last, values in [0, 255];
    for floats already in [0, 1] pass `do_rescale=False`, as with any HF image processor). 16 / 32-bit images
    (thermal PNG / TIFF, integer arrays wider than 8 bits) are scaled to 8 bits by their own min and max, as the
    training data was. Grey images are repeated
    to three channels, as the evaluation transform converts them to RGB. A modality that is missing is given as `None`:
    its slot in `pixel_values` is zero and its `modality_mask` entry is `False`, which the model reads as
    "missing" (paper Tables 3-4).

    Example:

    ```python
    >>> processor = AutoImageProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    >>> inputs = processor([rgb, nir, None], return_tensors="pt")  # TIR missing
    >>> inputs["pixel_values"].shape, inputs["modality_mask"]
    (torch.Size([1, 3, 3, 256, 128]), tensor([[ True,  True, False]]))
    ```
    """

    model_input_names = ["pixel_values", "modality_mask", "camera_ids"]
    resample = PILImageResampling.BILINEAR
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    size = {"height": 256, "width": 128}
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def preprocess(self, images, camera_ids=None, return_tensors="pt", **kwargs) -> BatchFeature:
        r"""
        Args:
            images: one `[rgb, nir, tir]` triple, or a list of triples; `None` marks a missing modality.
            camera_ids (`int` or list of `int`, *optional*): the camera of each sample, for checkpoints trained with
                camera embeddings (SIE); passed through as `camera_ids`.
            return_tensors (`str`, defaults to `"pt"`): `"pt"` or `"np"`.
            kwargs: the usual image-processor overrides (`size`, `resample`, `image_mean`, ...).
        """
        triples = _as_triples(images)
        present = [_with_channels(_to_8bit(image)) for triple in triples for image in triple if image is not None]
        if not present:
            raise ValueError("every modality of every sample is None: give at least one image")
        kwargs["return_tensors"] = None  # the per-image arrays are stacked below, with zeros for missing modalities
        arrays = list(super().preprocess(present, **kwargs)["pixel_values"])
        shapes = {tuple(array.shape[-2:]) for array in arrays}
        if len(shapes) != 1:
            raise ValueError(f"the processed images differ in size {sorted(shapes)}: keep do_resize=True")
        height, width = shapes.pop()
        pixel_values = np.zeros((len(triples), len(MODALITIES), 3, height, width), dtype=np.float32)
        modality_mask = np.zeros((len(triples), len(MODALITIES)), dtype=bool)
        arrays = iter(arrays)
        for i, triple in enumerate(triples):
            for m, image in enumerate(triple):
                if image is not None:
                    pixel_values[i, m] = next(arrays)  # (1, H, W) broadcasts when do_convert_rgb=False
                    modality_mask[i, m] = True
        data = {"pixel_values": pixel_values, "modality_mask": modality_mask}
        if camera_ids is not None:
            cams = np.atleast_1d(np.asarray(camera_ids))
            if cams.dtype == bool or not (np.issubdtype(cams.dtype, np.integer) or (
                    np.issubdtype(cams.dtype, np.floating) and np.isfinite(cams).all() and (cams == np.round(cams)).all())):
                raise ValueError(f"camera_ids: expected integer camera indices, got {np.asarray(camera_ids).tolist()}")
            cams = cams.astype(np.int64)
            if cams.shape != (len(triples),):
                raise ValueError(f"camera_ids: expected one id per sample ({len(triples)}), got {cams.tolist()}")
            data["camera_ids"] = cams
        return BatchFeature(data=data, tensor_type=return_tensors)


# More than 8 bits per pixel (thermal cameras write 16-bit PNG / TIFF): PIL modes and integer array types.
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _to_8bit(image: Any) -> Any:
    """A 16 / 32-bit image -> 8 bits by its own min and max (the rule of the training data, mmreid/data/pixels.py:
    linear like a thermal viewer's automatic gain; clipping at 255 would turn a thermal frame white). PIL images of
    a high-bit mode and integer arrays / tensors wider than 8 bits are scaled; 8-bit and float inputs pass."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode not in HIGH_BIT_MODES:
            return image
        return Image.fromarray(_rescale(np.asarray(image)), mode="L")
    if hasattr(image, "detach"):  # a torch tensor
        if image.dtype.is_floating_point or image.dtype.itemsize == 1:
            return image
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.integer) and image.dtype.itemsize > 1:
        return _rescale(image)
    return image


def _rescale(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("images: an image holds NaN or infinite pixel values")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _with_channels(image: Any) -> Any:
    """A 2-D (grey) array or tensor gets a trailing channel axis, which the HF image utilities need."""
    if getattr(image, "ndim", None) == 2:
        return image[..., None]
    return image


def _as_triples(images: Any) -> list[Sequence[Any]]:
    """One triple or a batch of triples -> a list of triples (a triple is a list or tuple of 3 images or None)."""
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError("images: expected one [rgb, nir, tir] triple or a list of such triples "
                         f"(None for a missing modality), got {type(images).__name__}")
    nested = isinstance(images[0], (list, tuple))
    batch = images if nested else [images]
    for i, triple in enumerate(batch):
        if not isinstance(triple, (list, tuple)) or len(triple) != len(MODALITIES):
            where = f"images[{i}]" if nested else "images"
            size = f" of length {len(triple)}" if hasattr(triple, "__len__") else ""
            raise ValueError(f"{where}: expected a triple [rgb, nir, tir] (None for a missing modality), "
                             f"got {type(triple).__name__}{size}")
    return list(batch)


# The name of the class in checkpoints and code written before the family files (kept so that they load).
DeMoImageProcessor = ReIDImageProcessor

__all__ = ["ReIDImageProcessor", "DeMoImageProcessor"]

ReIDImageProcessor.register_for_auto_class("AutoImageProcessor")
