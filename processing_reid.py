"""Processor of the ReID family's checkpoints whose model reads captions (``config.uses_text``, e.g. NEXT): image
triples and their captions -> model inputs.

Ships with every such checkpoint (``AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)``). Images go
through the checkpoint's :class:`ReIDImageProcessor`; the captions (one per modality image) through its tokenizer,
padded on the right to the longest caption of the call. An empty or missing caption gets an all-zero attention mask,
which the model reads as "no caption" and replaces by its learned no-text embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.image_processing_base import BatchFeature
from transformers.processing_utils import ProcessorMixin

try:  # loaded as a checkpoint's remote code (a package) or from a checkout of the repository
    from .configuration_reid import MODALITIES
except ImportError:
    from configuration_reid import MODALITIES


class ReIDProcessor(ProcessorMixin):
    r"""
    Combines a [`ReIDImageProcessor`] and the model's tokenizer.

    Args:
        image_processor: turns `[rgb, nir, tir]` triples into `pixel_values` and `modality_mask`.
        tokenizer: the caption tokenizer saved with the checkpoint.
        caption_max_length (`int`, *optional*): captions are truncated to this many tokens (the text tower's
            position limit); defaults to the tokenizer's `model_max_length`.
        caption_prefixes (`list[str]`, *optional*): text put before the RGB, NIR and TIR captions (the model's
            `config.caption_prefixes`), a missing caption included, which is then the prefix alone.

    Example:

    ```python
    >>> processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    >>> inputs = processor(images=[rgb, nir, tir], text=["A man in a red coat.", "", "A warm silhouette."])
    >>> embedding = model(**inputs).embeddings
    ```
    """

    def __init__(self, image_processor=None, tokenizer=None, caption_max_length: int | None = None,
                 caption_prefixes: Sequence[str] | None = None, **kwargs):
        self.caption_max_length = caption_max_length
        self.caption_prefixes = list(caption_prefixes) if caption_prefixes is not None else None
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, camera_ids=None, return_tensors: str = "pt", **kwargs) -> BatchFeature:
        r"""
        Args:
            images: one `[rgb, nir, tir]` triple or a list of triples (`None` for a missing modality).
            text: the captions in the same nesting: one `[rgb, nir, tir]` triple of strings per sample (`""` or
                `None` where an image has no caption). Leave out to embed without captions.
            camera_ids (*optional*): one camera id per sample, for checkpoints with camera embeddings.
            return_tensors: `"pt"` (the default).
            kwargs: image-processor overrides (`size`, `resample`, ...).
        """
        if images is None:
            raise ValueError("images: the model embeds image triples; pass one [rgb, nir, tir] triple or a list of them")
        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r}: ReIDProcessor returns torch tensors ('pt') only")
        inputs = self.image_processor(images, camera_ids=camera_ids, return_tensors="pt", **kwargs)
        if text is not None:
            captions = _caption_triples(text)
            if len(captions) != inputs["pixel_values"].shape[0]:
                raise ValueError(f"text: {len(captions)} caption triple(s) for {inputs['pixel_values'].shape[0]} "
                                 "image triple(s); give one [rgb, nir, tir] caption triple per sample")
            inputs.update(self.tokenize_captions(captions))
        return inputs

    def tokenize_captions(self, captions: Sequence[Sequence[str]]) -> dict[str, torch.Tensor]:
        """Caption triples -> `input_ids` / `attention_mask` of shape (batch, 3, length), padded on the right to the
        longest caption; empty captions get an all-zero mask (the model's "no caption")."""
        if self.caption_prefixes is not None:  # a missing caption becomes the prefix alone, as in training
            captions = [[p + c for p, c in zip(self.caption_prefixes, triple)] for triple in captions]
        flat = [caption for triple in captions for caption in triple]
        input_ids, attention_mask = encode_captions(self.tokenizer, flat, self.caption_max_length)
        shape = (len(captions), len(MODALITIES), input_ids.shape[-1])
        return {"input_ids": input_ids.view(shape), "attention_mask": attention_mask.view(shape)}

    @property
    def model_input_names(self) -> list[str]:
        return [*self.image_processor.model_input_names, "input_ids", "attention_mask"]


def encode_captions(tokenizer, captions: Sequence[str], max_length: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> `input_ids` and `attention_mask` of shape (len(captions), length), padded on the right to the
    longest and truncated to `max_length` (default: the tokenizer's). Empty captions are not tokenized: they get
    pad ids and an all-zero mask (the model's "no caption"), not the ids of an empty string."""
    present = [i for i, caption in enumerate(captions) if caption.strip()]
    length = 1
    if present:
        encoded = tokenizer([captions[i] for i in present], padding="longest", truncation=True,
                            max_length=max_length or tokenizer.model_max_length, return_tensors="pt")
        length = encoded["input_ids"].shape[1]
    input_ids = torch.full((len(captions), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(captions), length), dtype=torch.long)
    if present:
        input_ids[present] = encoded["input_ids"]
        attention_mask[present] = encoded["attention_mask"].long()
    return input_ids, attention_mask


def _caption_triples(text: Any) -> list[list[str]]:
    """One triple of captions or a list of triples -> a list of triples of strings (None -> "")."""
    if not isinstance(text, (list, tuple)) or not text:
        raise ValueError("text: expected one [rgb, nir, tir] caption triple or a list of triples, "
                         f"got {type(text).__name__}")
    batch = [text] if isinstance(text[0], (str, type(None))) else text
    triples = []
    for i, triple in enumerate(batch):
        if (not isinstance(triple, (list, tuple)) or len(triple) != len(MODALITIES)
                or not all(isinstance(c, (str, type(None))) for c in triple)):
            raise ValueError(f"text[{i}]: expected 3 captions (rgb, nir, tir; '' or None where missing), got {triple!r}")
        triples.append([c or "" for c in triple])
    return triples


# The name of the class in checkpoints and code written before the family files (kept so that they load).
NextProcessor = ReIDProcessor

ReIDProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["ReIDProcessor", "NextProcessor", "encode_captions"]
