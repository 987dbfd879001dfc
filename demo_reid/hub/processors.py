"""The processor saved with every checkpoint: images (and captions) -> model inputs, as ``eval.py`` builds them."""

from __future__ import annotations

from image_processing_demo import DeMoImageProcessor
from processing_next import NextProcessor

from ..data.text import caption_max_length

__all__ = ["build_processor", "tokenizer_of"]


def build_processor(config, tokenizer=None):
    """A :class:`DeMoImageProcessor` at the model's input size, combined with ``tokenizer`` into a
    :class:`NextProcessor` for a text-conditioned model (captions truncated to the text tower's position limit)."""
    height, width = config.image_size
    image_processor = DeMoImageProcessor(size={"height": int(height), "width": int(width)})
    if tokenizer is None:
        return image_processor
    return NextProcessor(image_processor, tokenizer, caption_max_length=caption_max_length(config, tokenizer))


def tokenizer_of(processing_class):
    """The caption tokenizer inside a trainer's ``processing_class`` (a processor or a bare tokenizer), or None."""
    if processing_class is None or isinstance(processing_class, DeMoImageProcessor):
        return None
    return getattr(processing_class, "tokenizer", processing_class)
