"""A query triple -> its embedding, through the checkpoint's own processor (the transform ``eval.py`` applies), so
a query embeds as the gallery did; any modality may be missing, and a NEXT checkpoint takes one caption each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import UsageError, first_line

__all__ = ["QueryEmbedding", "QueryEncoder", "open_image"]


def open_image(path, what: str):
    """A PIL image from ``path`` (RGB-converted, fully decoded), or a one-line UsageError naming ``what``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(Path(path).expanduser()) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UsageError(f"{what} {path}: not a readable image ({first_line(exc, 120)})") from None


@dataclass
class QueryEmbedding:
    embedding: np.ndarray  # (D,) float32, L2-normalised
    expert_weights: Optional[np.ndarray]  # (heads, experts) or None
    expert_names: tuple[str, ...]


class QueryEncoder:
    """The checkpoint's model and processor (and tokenizer), loaded once, embedding one triple at a time."""

    def __init__(self, checkpoint: str):
        from transformers import AutoProcessor

        from ..hub.loading import load_checkpoint

        self.checkpoint = str(checkpoint)
        self.model = load_checkpoint(self.checkpoint).eval()
        try:
            self.processor = AutoProcessor.from_pretrained(self.checkpoint, trust_remote_code=True)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--model {checkpoint}: no processor loads from it ({first_line(exc, 120)}); "
                             "train.py saves one beside the weights") from None
        self.uses_text = bool(getattr(self.model.config, "uses_text", False))
        self._fingerprint = None

    @property
    def fingerprint(self) -> str:
        """The model's weights fingerprint (compared with the gallery's: the same model must embed both)."""
        if self._fingerprint is None:
            from .store import model_fingerprint

            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def expert_names(self, num_experts: int) -> tuple[str, ...]:
        """Names of the ``num_experts`` expert weights: the model's own (``model.expert_names`` or
        ``config.expert_names``), else DeMo's seven modality combinations when there are seven, else E1..En."""
        from ..evaluation.visualize import DEFAULT_EXPERT_NAMES

        for names in (getattr(self.model, "expert_names", None), getattr(self.model.config, "expert_names", None),
                      DEFAULT_EXPERT_NAMES):
            if names and len(names) == num_experts:
                return tuple(names)
        return tuple(f"E{i + 1}" for i in range(num_experts))

    @torch.no_grad()
    def embed(self, images: Sequence, captions: Optional[Sequence[Optional[str]]] = None,
              camera_id: Optional[int] = None) -> QueryEmbedding:
        """``images``: RGB, NIR, TIR (PIL images or None for a missing one); ``captions`` likewise (NEXT only);
        ``camera_id``: the camera's index in the training data, when the model has camera embeddings."""
        if len(images) != 3:
            raise UsageError(f"a query is an RGB, NIR, TIR triple; got {len(images)} images")
        if all(image is None for image in images):
            raise UsageError("give at least one image of the query (RGB, NIR or TIR)")
        kwargs = {}
        num_cameras = getattr(self.model.config, "num_cameras", 0)
        if camera_id is not None:
            if not 0 <= camera_id < num_cameras:
                raise UsageError(f"--camera {camera_id}: this model knows cameras 0..{num_cameras - 1}"
                                 if num_cameras else f"--camera {camera_id}: this model has no camera embeddings")
            kwargs["camera_ids"] = [camera_id]
        if self.uses_text and captions is not None and any(captions):
            kwargs["text"] = [[c or "" for c in captions]]
        inputs = self.processor(images=[list(images)], **kwargs)
        out = self.model(**inputs)
        embedding = torch.nn.functional.normalize(out.embeddings.float(), dim=1)[0].numpy()
        weights = getattr(out, "expert_weights", None)
        weights = None if weights is None else weights[0].float().numpy()
        return QueryEmbedding(embedding.astype(np.float32), weights,
                              () if weights is None else self.expert_names(weights.shape[-1]))
