"""Captions for NEXT: sentence splitting, seeded sentence sampling, batch tokenization and an offline tokenizer.

Real checkpoints use the CLIP tokenizer saved beside the CLIP weights. No hub is reachable in tests or on the
synthetic set, so `build_caption_tokenizer` builds a small word-level tokenizer from caption texts with the
`tokenizers` library; the model reads its vocabulary size and special ids from `text_config`, never CLIP's.
"""

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

from processing_reid import encode_captions  # the checkpoint's processor tokenizes captions the same way

PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<unk>", "<bos>", "<eos>"
# A sentence ends at ".", "!" or "?" followed by white space (so "0.8" or "t-shirt." at the end stay whole).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(caption: str) -> list[str]:
    """The sentences of `caption`, stripped, in order; `""` (or white space) gives `[]`."""
    return [sentence for sentence in (s.strip() for s in _SENTENCE_END.split(caption.strip())) if sentence]


def sample_sentences(caption: str, k: int | None, generator: torch.Generator) -> str:
    """A random subset of `k` sentences of `caption` (`k=None`: of a count drawn uniformly in [1, n], n the caption's
    sentences), kept in their original order and joined by one space.

    The whole caption comes back unchanged, without drawing from `generator`, when it has at most `k` sentences (at
    most one with `k=None`; `""` stays `""`). Otherwise the draws (the count with `k=None`, then one `torch.randperm`)
    come from `generator`, so the subset depends only on its seed.
    """
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a positive integer or None, got {k!r}")
    sentences = split_sentences(caption)
    if len(sentences) <= (k or 1):
        return caption
    if k is None:
        k = int(torch.randint(1, len(sentences) + 1, (1,), generator=generator))
    keep = torch.randperm(len(sentences), generator=generator)[:k].sort().values.tolist()
    return " ".join(sentences[i] for i in keep)


def build_caption_tokenizer(
    texts: Iterable[str],
    model_max_length: int = 77,
    min_frequency: int = 1,
    max_vocab_size: int | None = None,
):
    """A lower-casing word-level `PreTrainedTokenizerFast` built offline from caption texts.

    Words and punctuation marks are tokens; every encoding is `<bos> ... <eos>`, truncated to `model_max_length`
    with both kept. Ids: `<pad>` 0, `<unk>` 1, the words by decreasing frequency (ties alphabetical), then `<bos>`
    and `<eos>`, so `<eos>` has the highest id as CLIP's end-of-text token does (HF's CLIP text model then finds it
    under either of its pooling rules).
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    if model_max_length < 2:
        raise ValueError(f"model_max_length must be >= 2 (room for <bos> and <eos>), got {model_max_length}")
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Whitespace()
    counts = Counter()
    for text in texts:
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        counts.update(word for word, _ in words)
    words = sorted((w for w, c in counts.items() if c >= min_frequency), key=lambda w: (-counts[w], w))
    if max_vocab_size is not None:
        words = words[: max(0, max_vocab_size - 4)]
    vocab = {PAD_TOKEN: 0, UNK_TOKEN: 1}
    vocab.update({word: i + 2 for i, word in enumerate(words)})
    vocab[BOS_TOKEN], vocab[EOS_TOKEN] = len(vocab), len(vocab) + 1

    tokenizer = Tokenizer(WordLevel(vocab, unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN]), (EOS_TOKEN, vocab[EOS_TOKEN])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
    )


def caption_max_length(config, tokenizer) -> int:
    """Captions are truncated to what both the tokenizer and the model's text tower (if it has a `text_config`)
    accept."""
    text_config = getattr(config, "text_config", None)
    return min(tokenizer.model_max_length, getattr(text_config, "max_position_embeddings", tokenizer.model_max_length))


def tokenize_captions(tokenizer, captions: Sequence, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Tokenize nested captions into the model's `input_ids` / `attention_mask`.

    `captions` is a batch of `[rgb, nir, tir]` strings (gives `(B, 3, L)`) or of one such triple per semantic expert
    (gives `(B, N_s, 3, L)`). Captions are padded on the right to the longest one and truncated to `max_length`
    (default `tokenizer.model_max_length`). An empty caption gets an all-zero attention mask, which the model reads
    as "no caption" (it then uses its learned no-text embedding).
    """
    if len(captions) == 0:
        raise ValueError("captions is empty; pass one [rgb, nir, tir] triple (or one per expert) per sample")
    per_expert = not isinstance(captions[0][0], str)
    samples = captions if per_expert else [[triple] for triple in captions]
    shape = (len(samples), len(samples[0]), 3)
    flat = []
    for sample in samples:
        if len(sample) != shape[1]:
            raise ValueError(f"every sample needs {shape[1]} caption triples, got {len(sample)}")
        for triple in sample:
            if len(triple) != 3 or not all(isinstance(c, str) for c in triple):
                raise ValueError(f"each caption triple must be 3 strings (rgb, nir, tir), got {triple!r}")
            flat.extend(triple)
    input_ids, attention_mask = encode_captions(tokenizer, flat, max_length)
    length = input_ids.shape[-1]
    out_shape = shape + (length,) if per_expert else (shape[0], 3, length)
    return {"input_ids": input_ids.view(out_shape), "attention_mask": attention_mask.view(out_shape)}


__all__ = ["build_caption_tokenizer", "caption_max_length", "sample_sentences", "split_sentences", "tokenize_captions"]
