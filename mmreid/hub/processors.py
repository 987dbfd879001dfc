"""The processor saved with every checkpoint: images (and captions) -> model inputs, as ``eval.py`` builds them."""

from __future__ import annotations

from image_processing_reid import ReIDImageProcessor
from processing_reid import ReIDProcessor

from ..data.text import caption_max_length

__all__ = ["build_processor", "tokenizer_of"]


def build_processor(config, tokenizer=None):
    """The family's :class:`ReIDImageProcessor` at the model's input size, combined with ``tokenizer`` into a
    :class:`ReIDProcessor` for a model that reads captions (``config.uses_text``; captions truncated to the text
    tower's position limit). Any model of the family, built-in or remote code, gets its processor this way; it
    normalises with the config's ``image_mean`` / ``image_std`` (what the model was trained with)."""
    height, width = config.image_size
    normalization = {key: list(getattr(config, key)) for key in ("image_mean", "image_std")
                     if getattr(config, key, None)}
    image_processor = ReIDImageProcessor(size={"height": int(height), "width": int(width)}, **normalization)
    if tokenizer is None or not getattr(config, "uses_text", False):
        return image_processor
    return ReIDProcessor(image_processor, tokenizer, caption_max_length=caption_max_length(config, tokenizer),
                         caption_prefixes=getattr(config, "caption_prefixes", None))


def tokenizer_of(processing_class):
    """The caption tokenizer inside a trainer's ``processing_class`` (a processor or a bare tokenizer), or None."""
    if processing_class is None or isinstance(processing_class, ReIDImageProcessor):
        return None
    return getattr(processing_class, "tokenizer", processing_class)
