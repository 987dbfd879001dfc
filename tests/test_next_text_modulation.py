"""The text modulation of NEXT's semantic experts learns (issue 21).

Before, each expert scaled its selected tokens by k * softmax(gamma) and then LayerNorm-ed them, which erased the
scale: gamma (hence the captions) acted only through which patches top-k picked, which has no gradient, and the
recipe's weight decay shrank the modulation network to ~0 within the default run. Here, on the real trainer and
batches: on a fresh model the modulation's gradient is of the order of the other head parameters', and after a
short training run two different captions still change the semantic features and the modulation keeps the size of
its initialisation.
"""

import statistics

import pytest
import torch
from conftest import build_tiny_dataset, tiny_train_args

import train
from demo_reid.data.collate import collator_for
from demo_reid.data.loading import load_reid_dataset
from demo_reid.data.text import tokenize_captions
from demo_reid.training.arguments import parse_args

TINY_NEXT = [*tiny_train_args("next"), "--num-identities", "4", "--num-instances", "2", "--save-strategy", "no",
             "--logging-steps", "10"]
# The earlier choices, still reachable as switches: they must get the gradient too.
EARLIER_FORM = ["--semantic-expert", "attention_pool", "--saliency", "cls_dot", "--semantic-expert-dropout", "0",
                "--supervised-heads", "all", "--inference-features", "all", "--caption-sentences-per-expert", "2"]
# Mean |gradient| of a modulation weight vs the median over the head parameters (every trainable tensor outside the
# image tower). Measured on this fresh tiny model: 17-22x (only the k selected patches of n get a gradient); the
# LayerNorm-ed selection of the earlier code gave about 15,000x.
GRADIENT_BOUND = 30
CAPTION_A = "An adult man seen from the front. He is wearing a red jacket and black trousers. He carries a bag."
CAPTION_B = "A young woman seen from the back. She is wearing a white dress and brown shoes. Her hair is long."


@pytest.fixture(scope="module")
def captioned_dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("next-modulation")
    return build_tiny_dataset(base, seed=3, num_train_ids=8, num_test_ids=4, images_per_id=5, captions=True)


def _trainer(dataset, tmp_path, extra=()):
    torch.set_num_threads(1)
    args = [*TINY_NEXT, "--dataset", dataset, "--output-dir", str(tmp_path / "out"), *extra]
    return train.build_trainer(parse_args(args))[0]


def _modulation_weights(model) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.semantic_experts.modulation.named_parameters() if name.endswith("weight")}


@pytest.mark.parametrize("switches", [[], EARLIER_FORM], ids=["defaults", "earlier-form"])
def test_modulation_gradient_is_of_the_order_of_the_heads(captioned_dataset, tmp_path, switches):
    trainer = _trainer(captioned_dataset, tmp_path, switches)
    model = trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(model, batch).backward()
    heads = {name: p.grad.abs().mean().item() for name, p in model.named_parameters()
             if p.requires_grad and not name.startswith("vision_tower")}
    median = statistics.median(heads.values())
    ratios = {name: median / p.grad.abs().mean().item() for name, p in _modulation_weights(model).items()}
    print(f"median head |grad| {median:.3g}; median / modulation |grad|: {ratios}")
    assert all(ratio < GRADIENT_BOUND for ratio in ratios.values()), ratios


def _semantic_rows(model, tokenizer, pixel_values, caption: str) -> torch.Tensor:
    captions = tokenize_captions(tokenizer, [[caption] * 3] * len(pixel_values))
    with torch.no_grad():
        return model(pixel_values, **captions).feature_sets["semantic"]


def test_short_training_keeps_the_captions_effect(captioned_dataset, tmp_path):
    """40 steps at a learning rate of 1e-2 with the recipe's weight decay. The earlier code's modulation weights fell
    to 14 % of their init here (the decay moves each weight by about one learning rate per step, 0.4 in all, against
    a mean |w| of 0.1 at init); after the default 20-epoch run they were at 0.03 % and two captions changed the
    semantic features by 2e-7 (relative)."""
    trainer = _trainer(captioned_dataset, tmp_path, ["--max-steps", "40", "--learning-rate", "1e-2",
                                                      "--vision-tower-lr", "1e-2"])
    model = trainer.model
    init = {name: p.detach().abs().mean().item() for name, p in _modulation_weights(model).items()}
    trainer.train()
    trained = {name: p.detach().abs().mean().item() for name, p in _modulation_weights(model).items()}
    kept = {name: trained[name] / init[name] for name in init}
    print(f"modulation mean |w| trained / init: {kept}")
    assert all(ratio > 0.5 for ratio in kept.values()), kept

    model.eval()
    tokenizer = trainer.processing_class.tokenizer
    query = load_reid_dataset(captioned_dataset)["query"]
    rows = [query[i] for i in range(len(query))]
    pixel_values = collator_for(model.config, train=False)(rows)["pixel_values"]
    a, b = (_semantic_rows(model, tokenizer, pixel_values, caption) for caption in (CAPTION_A, CAPTION_B))
    change = ((a - b).abs().max() / a.abs().max()).item()
    print(f"semantic features, two captions: max |a - b| / max |a| = {change:.3g}")
    assert change >= 1e-2
