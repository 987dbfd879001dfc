"""Whether a NEXT model's captions matter: how much two captions (or a caption and none) move its features, and
how large its text-modulation weights still are against a fresh initialisation (issue 21: they used to collapse)."""

from __future__ import annotations

import torch

__all__ = ["CAPTION_PAIR", "caption_effect", "modulation_size"]

# Two captions that disagree on every attribute the synthetic captions have.
CAPTION_PAIR = (
    "An adult man seen from the front. He is wearing a red jacket and black trousers. He carries a bag.",
    "A young woman seen from the back. She is wearing a white dress and brown shoes. Her hair is long.",
)


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a|."""
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()


@torch.no_grad()
def caption_effect(model, tokenizer, pixel_values: torch.Tensor, captions: tuple[str, str] = CAPTION_PAIR,
                   rows: tuple[str, ...] = ("semantic", "final")) -> dict[str, dict[str, float]]:
    """Per feature row: the relative change (max |a - b| / max |a|) between the features of the same images read
    with `captions[0]` and `captions[1]` (every modality gets the caption), and with `captions[0]` and no caption."""
    from mmreid.data.text import tokenize_captions

    was_training = model.training
    model.eval()

    def features(caption):
        text = {} if caption is None else tokenize_captions(tokenizer, [[caption] * 3] * len(pixel_values))
        return model(pixel_values, **text).feature_sets

    try:
        first, second, none = features(captions[0]), features(captions[1]), features(None)
    finally:
        model.train(was_training)
    return {row: {"two_captions": _relative_change(first[row], second[row]),
                  "caption_vs_none": _relative_change(first[row], none[row])} for row in rows if row in first}


def modulation_size(model, reference=None) -> dict[str, float]:
    """Mean |w| of each text-modulation weight of `model` divided by that of `reference` (default: a fresh model of
    the same config, seed 0): about 1 at init, near 0 when the weights collapsed."""
    if reference is None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)
        reference = type(model)(model.config)
        torch.random.set_rng_state(generator_state)
    fresh = dict(reference.semantic_experts.modulation.named_parameters())
    return {name: (p.detach().abs().mean() / fresh[name].detach().abs().mean()).item()
            for name, p in model.semantic_experts.modulation.named_parameters() if name.endswith("weight")}
