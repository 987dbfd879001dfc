"""`torch.compile(model, fullgraph=True)`: every DeMo ablation / gating variant and NEXT with and without captions
compile to one graph (no graph break, hence no host sync in the forward), in training (forward + backward) and
evaluation mode, and give the eager model's outputs; so do NEXT with text prompts and a DeMo whose tower has peft's
LoRA adapters; the input checks keep their eager errors where they can.

fullgraph=True is what proves the absence of graph breaks: Dynamo raises on the first one, whatever the backend.
The variants run on the `eager` backend in evaluation (Dynamo alone) and `aot_eager` in training (Dynamo + AOT
autograd for the backward), seconds each; DeMo's training step and NEXT's evaluation also go through inductor, the
backend `train.py --torch-compile` uses (about a minute each on a 2-core CPU).
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from mmreid.data.text import build_caption_tokenizer, tokenize_captions
from mmreid.hub.backbones import tiny_demo_config, tiny_next_config
from mmreid.training.tuning import TowerTuning, apply_tower_tuning
from modeling_demo import DeMoModel
from modeling_next import NextModel
from configuration_reid import BACKBONE_MODEL_TYPES
from tests.conftest import random_triples

CAPTIONS = [
    "An adult male seen from the side. He is wearing a white t-shirt with black shorts. He is carrying a backpack.",
    "A teenager male seen from the front. He is wearing a t-shirt with shorts. He is carrying a bag.",
    "An adult female seen from the back. She is wearing a red coat with blue jeans. She is carrying nothing.",
]
BATCH = 4

# DeMo: the paper's ablations (Table 4) and gating baselines (Table 6), each option away from its default once.
DEMO_VARIANTS = {
    "default": {},
    "simple_add": {"gating": "simple_add"},
    "simple_concat": {"gating": "simple_concat"},
    "no_atmoe": {"use_atmoe": False},
    "no_hdm": {"use_hdm": False, "use_atmoe": False},
    "no_pife": {"use_pife": False},
    "per_modality_classifiers": {"direct_classifier": False, "inference_features": "moe"},
    "no_cameras": {"num_cameras": 0},
}
NEXT_VARIANTS = {
    "captions": {},
    "per_expert_captions": {},
    "no_captions": {},
    "use_text_false": {"use_text": False},
    "no_tmse": {"use_tmse": False},
    "no_csse": {"use_csse": False},
    "text_prompts": {"num_text_prompts": 2},  # the prompted caption pass IDEA shares (its gradient reaches them)
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_caption_tokenizer(CAPTIONS, model_max_length=32)


def demo_case(name: str):
    options = dict(DEMO_VARIANTS[name])
    num_cameras = options.pop("num_cameras", 3)
    torch.manual_seed(0)
    model = DeMoModel(tiny_demo_config(num_labels=6, num_cameras=num_cameras, image_size=(32, 16), atmoe_heads=2,
                                       hdm_dropout=0.0, **options))
    inputs = {"pixel_values": random_triples(BATCH),
              "modality_mask": torch.tensor([[True, True, True], [True, False, True], [False, True, True]] + [[True] * 3])}
    if num_cameras:
        inputs["camera_ids"] = torch.tensor([0, 1, 2, 0])
    return model, inputs


def next_case(name: str, tokenizer):
    torch.manual_seed(0)
    # No dropout: eager and compiled draw different masks (train.py --torch-compile makes them equal otherwise).
    model = NextModel(tiny_next_config(tokenizer, num_labels=6, num_cameras=3, semantic_expert_dropout=0.0,
                                       **NEXT_VARIANTS[name]))
    inputs = {"pixel_values": random_triples(BATCH), "camera_ids": torch.tensor([0, 1, 2, 0])}
    triples = [[CAPTIONS[0], "", CAPTIONS[1]], [CAPTIONS[2]] * 3, ["", "", ""], [CAPTIONS[1], CAPTIONS[0], ""]]
    if name == "per_expert_captions":  # training batches: one caption per semantic expert and modality
        experts = model.config.num_semantic_experts
        inputs.update(tokenize_captions(tokenizer, [[triple] * experts for triple in triples]))
    elif name != "no_captions":
        inputs.update(tokenize_captions(tokenizer, triples))
    return model, inputs


def compiled_matches_eager(model, inputs, backend: str, training: bool, atol: float) -> None:
    """Compile `model` with fullgraph=True (raises on a graph break), run it twice in the given mode (the second call
    must not recompile), and compare the embeddings, logits and (training) the parameters' gradients with the eager
    model's."""
    torch._dynamo.reset()
    model.train(training)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    results = []
    for run in (model, compiled, compiled):
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(training):
            out = run(**inputs)
        result = {"embeddings": out.embeddings.detach(), **{f"logits.{k}": v.detach() for k, v in out.logits.items()}}
        if training:
            (out.embeddings.square().mean() + sum(v.logsumexp(-1).mean() for v in out.logits.values())).backward()
            result.update({f"grad.{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        results.append(result)
    assert counter.frame_count == 1  # one graph, and the second call reuses it (no recompilation)
    eager = results[0]
    for got in results[1:]:
        assert list(got) == list(eager)
        for key in eager:
            torch.testing.assert_close(got[key], eager[key], atol=atol, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}")
    torch._dynamo.reset()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(DEMO_VARIANTS))
def test_demo_variants_compile_to_one_graph(name, training):
    model, inputs = demo_case(name)
    compiled_matches_eager(model, inputs, "aot_eager" if training else "eager", training, atol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(NEXT_VARIANTS))
def test_next_variants_compile_to_one_graph(name, training, tokenizer):
    model, inputs = next_case(name, tokenizer)
    compiled_matches_eager(model, inputs, "aot_eager" if training else "eager", training, atol=1e-5)


def test_demo_default_trains_compiled_with_inductor():
    model, inputs = demo_case("default")
    compiled_matches_eager(model, inputs, "inductor", True, atol=1e-4)


def test_next_with_captions_compiles_with_inductor(tokenizer):
    model, inputs = next_case("captions", tokenizer)
    compiled_matches_eager(model, inputs, "inductor", False, atol=1e-4)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_lora_tower_trains_compiled_to_one_graph(backend):
    """train.py --tower-tuning lora --torch-compile: peft's adapters compile into the one graph, with adapters that
    act (B != 0, as after training; peft starts B at zero) and their gradients equal to eager's."""
    model, inputs = demo_case("default")
    apply_tower_tuning(model, TowerTuning("lora", lora_rank=2, lora_dropout=0.0))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    compiled_matches_eager(model, inputs, backend, True, atol=1e-5 if backend == "aot_eager" else 1e-4)


def test_compiled_model_keeps_the_shape_and_type_errors():
    """Checks on shapes and dtypes are static (decided while tracing, guarded on): a model compiled as the Trainer
    compiles it (`--torch-compile`: fullgraph=False) raises the eager model's error, message included. (Under
    fullgraph=True Dynamo wraps the raise in its own `Unsupported` error, whose text quotes the message.)"""
    model, inputs = demo_case("default")
    model.eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    bad_inputs = [
        {**inputs, "pixel_values": random_triples(BATCH, image_size=(16, 16))},
        {**inputs, "camera_ids": inputs["camera_ids"].float()},
        {**inputs, "camera_ids": inputs["camera_ids"][:2]},
        {**inputs, "modality_mask": inputs["modality_mask"].float()},
    ]
    for bad in bad_inputs:
        with pytest.raises((ValueError, TypeError)) as eager_error:
            model(**bad)
        with pytest.raises(type(eager_error.value)) as compiled_error:
            compiled(**bad)
        assert str(compiled_error.value) == str(eager_error.value)
    torch._dynamo.reset()


def test_value_checks_still_run_in_eager_mode():
    """The camera-id range check reads tensor values: skipped while compiling (it would be a graph break and, on a
    GPU, a host sync on every forward), it still runs, with its message, in eager mode."""
    model, inputs = demo_case("default")
    with pytest.raises(ValueError, match=r"camera_ids must be in \[0, 3\) \(num_cameras=3\), got values \[0, 1, 2, 3\]"):
        model.eval()(**{**inputs, "camera_ids": torch.tensor([0, 1, 2, 3])})


@pytest.mark.parametrize("family", [f for f in BACKBONE_MODEL_TYPES if f != "clip"])
def test_every_tower_family_trains_compiled_to_one_graph(family):
    """DeMo on each image-tower family of the registry (CLIP is every test above): one graph (Dynamo alone, the
    `eager` backend: fullgraph=True raises on any break) of the training-mode forward, with the eager model's
    outputs and gradients."""
    torch.manual_seed(0)
    model = DeMoModel(tiny_demo_config(num_labels=6, num_cameras=3, image_size=(32, 16), backbone_type=family,
                                       atmoe_heads=2, hdm_dropout=0.0))
    inputs = {"pixel_values": random_triples(BATCH), "camera_ids": torch.tensor([0, 1, 2, 0])}
    compiled_matches_eager(model, inputs, "eager", True, atol=1e-5)
