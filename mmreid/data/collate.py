"""Turn dataset rows into model batches: decode, resize, normalize, stack (no augmentation).

Why a separate layer: the same code must serve ``dataset.with_transform(...)`` (notebooks,
evaluation) and a torch ``DataLoader`` collate function with worker processes (training),
and must produce exactly the batch format fixed in ``docs/interfaces.md``.  Training
augmentation (flip, pad-crop, random erasing) runs on the tensors after collation and lives
with the trainer.

Resizing follows the original DeMo transforms: bicubic for training (``interpolation=3``)
and bilinear for evaluation (torchvision's ``Resize`` default, which the original test
transform uses).  Both are overridable.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .columns import CAPTION_COLUMNS, MODALITY_COLUMNS
from .missing import FILL_CONFIG_KEY, check_fill_mode, is_missing
from .pixels import to_8bit

# Batch key -> dataset column (names match the model's forward / the trainer).
_ID_KEYS = {"labels": "label", "camera_ids": "camid", "pids": "pid", "sceneids": "sceneid"}
_INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
                   "lanczos": Image.LANCZOS}


def _to_pil(value: Any) -> Image.Image:
    """Accept what a row can hold: a decoded PIL image, an Image cell dict, a path or bytes."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path") is not None:
            return Image.open(value["path"])
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    if isinstance(value, (str, Path)):
        return Image.open(value)
    raise TypeError(f"cannot read an image from a {type(value).__name__}; expected a PIL image, "
                    "an Image() cell dict with 'bytes'/'path', bytes or a file path")


def _new_batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 tensor, allocated in shared memory inside DataLoader workers.

    Like torch's default collate: the batch then reaches the main process without the extra
    copy into shared memory (which costs more than the decoding for 256x128 batches).
    """
    if torch.utils.data.get_worker_info() is not None:
        try:
            proto = torch.empty(0, dtype=torch.float32)
            storage = proto._typed_storage()._new_shared(int(np.prod(shape)), device=proto.device)
            return proto.new(storage).view(shape)
        except (AttributeError, RuntimeError):  # private API moved: fall back to a plain tensor
            pass
    return torch.empty(shape, dtype=torch.float32)


class ReIDTransform:
    """Rows -> ``{"pixel_values": (B, 3, 3, H, W) float32, "camera_ids", "pids", "sceneids"[, "labels"]
    [, "modality_mask"]}``.

    Use as ``dataset.with_transform(ReIDTransform(...))`` (it receives a dict of columns) or
    through :class:`ReIDCollator` in a DataLoader.  ``labels`` is returned only when the rows
    have a ``label`` column (the train split).  A missing image (``None``) is zeros in
    ``pixel_values`` and False in ``modality_mask`` (B, 3) bool, which is returned only when the batch
    has a missing image; ``fill_missing_modalities="rgb"`` repeats the row's RGB image into it instead
    (see :mod:`mmreid.data.missing`).
    """

    def __init__(self, image_size: Sequence[int] = (256, 128), train: bool = False,
                 interpolation: Optional[str] = None, mean: float | Sequence[float] = 0.5,
                 std: float | Sequence[float] = 0.5, fill_missing_modalities: Optional[str] = None):
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be (H, W) with positive ints, got {image_size!r}")
        interpolation = interpolation or ("bicubic" if train else "bilinear")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation {interpolation!r}: expected one of {sorted(_INTERPOLATIONS)}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.train = train
        self.fill_missing_modalities = check_fill_mode(fill_missing_modalities, "fill_missing_modalities")
        self.interpolation = interpolation
        # Folding (x / 255 - mean) / std into one multiply-add per element keeps decoding cheap.
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t

    def _load(self, value: Any, out: np.ndarray) -> None:
        img = to_8bit(_to_pil(value))  # 16 / 32-bit (thermal) images: min-max per image, not clipped to white
        if img.mode != "RGB":
            img = img.convert("RGB")
        h, w = self.image_size
        if img.size != (w, h):
            img = img.resize((w, h), _INTERPOLATIONS[self.interpolation])
        out[...] = np.asarray(img)

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        missing = [c for c in MODALITY_COLUMNS if c not in batch]
        if missing:
            raise KeyError(f"rows lack column(s) {missing}; got {sorted(batch)} "
                           "(build the dataset with mmreid.data.builder)")
        n = len(batch[MODALITY_COLUMNS[0]])
        h, w = self.image_size
        pixels = np.empty((n, len(MODALITY_COLUMNS), h, w, 3), dtype=np.uint8)
        present = np.ones((n, len(MODALITY_COLUMNS)), dtype=bool)
        for m, column in enumerate(MODALITY_COLUMNS):
            for i, value in enumerate(batch[column]):
                if is_missing(value):
                    present[i, m] = False
                else:
                    self._load(value, pixels[i, m])
        if self.fill_missing_modalities == "rgb" and not present.all():
            filled = ~present & present[:, :1]  # missing, and the row has its RGB image (column 0)
            for i, m in zip(*np.nonzero(filled)):
                pixels[i, m] = pixels[i, 0]
            present |= filled
        # One strided uint8 -> float32 copy, then in-place scale/shift: ~3x faster than
        # permute().float() followed by out-of-place arithmetic.
        x = _new_batch_tensor((n, len(MODALITY_COLUMNS), 3, h, w))
        x.copy_(torch.from_numpy(pixels).permute(0, 1, 4, 2, 3))
        out: dict[str, Any] = {"pixel_values": x.mul_(self._scale).add_(self._shift)}
        if not present.all():  # zeros where missing, as the checkpoint's image processor gives
            x[torch.from_numpy(~present)] = 0.0
            out["modality_mask"] = torch.from_numpy(present)
        for key, column in _ID_KEYS.items():
            if column in batch:
                out[key] = torch.as_tensor(list(batch[column]), dtype=torch.long)
        return out


METADATA_KEYS = ("pids", "camids", "sceneids")  # evaluation batches: what the metric needs, not model inputs


class CaptionEncoder:
    """Caption columns -> ``input_ids`` / ``attention_mask`` for a text-conditioned model (NEXT).

    In evaluation every caption is used whole: (B, 3, L), modality order RGB, NIR, TIR. In training each of the
    ``num_experts`` semantic experts gets its own random subset of ``sentences_per_expert`` sentences of each
    modality's caption (``None``: a count drawn uniformly in [1, n] per expert and modality, n the caption's
    sentences): (B, num_experts, 3, L). The subset is drawn from a generator seeded with the sample's
    seed (see :func:`mmreid.sampler.sample_seed`: seed, epoch and position), so it is reproducible and
    independent of the number of dataloader workers. An empty caption (none released for that image) gets an
    all-zero attention mask: the model then uses its learned "no text" embedding. With ``sample=False`` training
    reads whole captions too, (B, 3, L); ``prefixes`` (one per modality) are put before every caption, an empty one
    included (which is then the prefix alone, as IDEA's authors' data code makes it).
    """

    columns = CAPTION_COLUMNS

    def __init__(self, tokenizer, num_experts: int, sentences_per_expert: Optional[int],
                 max_length: Optional[int] = None, train: bool = False, sample: bool = True,
                 prefixes: Optional[Sequence[str]] = None):
        if num_experts < 1 or (sentences_per_expert is not None and sentences_per_expert < 1):
            raise ValueError(f"num_experts and sentences_per_expert must be >= 1 (sentences_per_expert may be None), "
                             f"got {num_experts}, {sentences_per_expert}")
        self.tokenizer = tokenizer
        self.num_experts = int(num_experts)
        self.sentences_per_expert = None if sentences_per_expert is None else int(sentences_per_expert)
        self.max_length = max_length
        self.train = train
        self.sample = sample
        self.prefixes = tuple(prefixes) if prefixes is not None else None

    def _nested(self, captions: Sequence[Sequence[str]], seeds: Optional[Sequence[int]]) -> list:
        """Per row its (RGB, NIR, TIR) captions (evaluation), or one sampled triple per expert (training)."""
        from .text import sample_sentences

        if not self.train or not self.sample:
            return [list(row) for row in captions]
        if seeds is None:
            raise ValueError("training batches need one seed per row to sample caption sentences "
                             "(use the trainer's seeded data loader)")
        nested = []
        for row, seed in zip(captions, seeds):
            generator = torch.Generator().manual_seed(int(seed) ^ 0x7E47)  # a stream apart from augmentation's
            nested.append([[sample_sentences(text, self.sentences_per_expert, generator) for text in row]
                           for _ in range(self.num_experts)])
        return nested

    def __call__(self, captions: Sequence[Sequence[str]], seeds: Optional[Sequence[int]] = None) -> dict:
        """``captions``: per row, its (RGB, NIR, TIR) captions ("" where missing)."""
        from .text import tokenize_captions

        nested = self._nested(captions, seeds)
        if self.prefixes is not None:  # after any sentence sampling; the prefix alone where a caption is missing
            def prefixed(triple):
                return [prefix + caption for prefix, caption in zip(self.prefixes, triple)]

            nested = [prefixed(row) if isinstance(row[0], str) else [prefixed(t) for t in row] for row in nested]
        return tokenize_captions(self.tokenizer, nested, max_length=self.max_length)


class ReIDCollator:
    """DataLoader ``collate_fn``: a list of rows -> one batch via :class:`ReIDTransform`.

    The batch holds the model's inputs by their forward-argument names (``pixel_values``, ``camera_ids`` when the
    model has cameras, ``input_ids`` / ``attention_mask`` with a :class:`CaptionEncoder`) plus ``labels`` for
    training, or the metric's ``pids`` / ``camids`` / ``sceneids`` (:data:`METADATA_KEYS`) for evaluation.
    Picklable, so it works with ``num_workers > 0``; each worker decodes its own batches.
    """

    def __init__(self, transform: Optional[ReIDTransform] = None, *, with_camera_ids: bool = True,
                 text: Optional[CaptionEncoder] = None, **transform_kwargs):
        self.transform = transform if transform is not None else ReIDTransform(**transform_kwargs)
        self.with_camera_ids = with_camera_ids
        self.text = text

    @property
    def train(self) -> bool:
        return self.transform.train

    @property
    def columns(self) -> tuple[str, ...]:
        """The dataset columns this collator reads (the trainer keeps only these)."""
        ids = ("label", "camid") if self.train else ("pid", "camid", "sceneid")
        return (*MODALITY_COLUMNS, *ids, *(self.text.columns if self.text is not None else ()))

    def __call__(self, rows: Sequence[Mapping[str, Any]], seeds: Optional[Sequence[int]] = None) -> dict[str, Any]:
        if not rows:
            raise ValueError("cannot collate an empty list of rows")
        decoded = self.transform({key: [row[key] for row in rows] for key in rows[0]})
        batch: dict[str, Any] = {"pixel_values": decoded["pixel_values"]}
        if "modality_mask" in decoded:  # a row lacks an image: the model leaves that modality out
            batch["modality_mask"] = decoded["modality_mask"]
        if self.with_camera_ids:
            batch["camera_ids"] = decoded["camera_ids"]
        if self.text is not None:
            missing = [c for c in self.text.columns if c not in rows[0]]
            if missing:
                raise KeyError(f"rows lack caption column(s) {missing}: build the dataset with --captions")
            captions = [[row[c] or "" for c in self.text.columns] for row in rows]
            batch.update(self.text(captions, seeds))
        if self.train:
            if "labels" not in decoded:
                raise KeyError("training rows need a `label` column (the train split)")
            batch["labels"] = decoded["labels"]
        else:
            batch.update(pids=decoded["pids"], camids=decoded["camera_ids"], sceneids=decoded["sceneids"])
        return batch


def collator_for(config, train: bool, tokenizer=None, with_captions: bool = True) -> ReIDCollator:
    """The collator a model config asks for: its image size, camera ids when it has cameras, and captions when it
    reads text (``config.uses_text``), a ``tokenizer`` is given and the dataset has captions (``with_captions``).
    Training captions are drawn as ``config.caption_groups`` sets of ``config.caption_sentences_per_group``
    sentences (a fixed count, or None: uniform in [1, n]); without them (a remote-code model's config may leave them
    out): one set, a uniform count."""
    from .text import caption_max_length

    text = None
    if getattr(config, "uses_text", False) and tokenizer is not None and with_captions:
        text = CaptionEncoder(tokenizer, getattr(config, "caption_groups", 1),
                              getattr(config, "caption_sentences_per_group", None),
                              max_length=caption_max_length(config, tokenizer),
                              train=train, sample=getattr(config, "caption_sampling", True),
                              prefixes=getattr(config, "caption_prefixes", None))
    return ReIDCollator(image_size=tuple(config.image_size), train=train, with_camera_ids=config.num_cameras > 0,
                        text=text, fill_missing_modalities=getattr(config, FILL_CONFIG_KEY, None),
                        mean=tuple(getattr(config, "image_mean", None) or (0.5, 0.5, 0.5)),
                        std=tuple(getattr(config, "image_std", None) or (0.5, 0.5, 0.5)))
