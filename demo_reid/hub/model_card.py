"""The model card (README.md) written with every checkpoint: Hub metadata the Hub can read, then prose.

The metadata follows the Hub's model-card spec through ``huggingface_hub.ModelCardData``: ``model-index`` results
(mAP and Rank-1 on the dataset's query / gallery protocol, with the rule that picked the epoch), ``base_model``,
``license``, ``library_name``, ``pipeline_tag`` and ``tags``. The text says what the model is, how to use it (the
processor and the model, both loaded with ``trust_remote_code``), the recipe and the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = ["MODEL_CARD_TEXT", "ModelCardInfo", "build_model_card", "FINAL_EPOCH", "BEST_ON_TEST"]

# How the reported epoch was chosen (train.py --select-best-on-test); shown in the card and in model-index.
FINAL_EPOCH = "final epoch"
BEST_ON_TEST = "best epoch selected on TEST split (optimistic)"
TASK_TYPE = "image-feature-extraction"  # the Hub task of an embedding model; ReID has no task id of its own
TASK_NAME = "Multi-modal object re-identification"
HEADLINE_METRICS = ("mAP", "Rank-1")  # the two numbers every ReID paper reports; in model-index

# model_type -> description (first sentence of the card), tags, and extra sections (title -> Markdown lines).
MODEL_CARD_TEXT = {
    "demo_reid": {
        "description": "DeMo (Decoupled Feature-Based Mixture of Experts, AAAI 2025) multi-modal (RGB / NIR / TIR) "
        "object re-identification model",
        "tags": ("demo",),
        "sections": {},
    },
    "next_reid": {
        "description": "NEXT (text-modulated multi-grained experts, arXiv 2505.20001) multi-modal (RGB / NIR / TIR) "
        "object re-identification model, in this repository's own implementation",
        "tags": ("next", "text-modulated"),
        "sections": {
            "Our reading of the paper's framework figure": [
                "The NEXT authors have not released code. This model implements their framework figure (TMSE, "
                "CSSE, MGFA); every choice the figure leaves open is ours, not the authors':",
                "",
                "- the saliency map alpha: softmax over patches of the scaled class-token-to-patch dot product;",
                "- the text modulation: one FC -> QuickGELU -> FC network per expert on the three concatenated "
                "beta maps, added to alpha;",
                "- differentiable top-k: the k kept patches of each modality are scaled by k x softmax of their "
                "scores, so the selection scores receive gradients;",
                "- each semantic expert pools its 3k tokens with one learned-query attention layer and an MLP;",
                "- CSSE: Soft-MoE routing with several slots per structure expert; each expert's feature is the "
                "combine-weighted mean of its slot outputs; no balance loss;",
                "- MGFA: one multi-head cross-attention per branch with the three class tokens as queries;",
                "- captions: in training each semantic expert sees its own seeded random subset of sentences of each "
                "modality's caption, in evaluation the whole caption; a learned no-text embedding per expert and "
                "modality replaces missing captions (and all captions with use_text=False);",
                "- the retrieval feature: concat(class tokens, final MGFA feature); ID + triplet loss on the class "
                "tokens, the semantic and structure branches and the final feature;",
                "- expert counts, k and sentences per expert: chosen by a small sweep on the synthetic set "
                "(docs/next.md).",
            ],
        },
    },
}


@dataclass
class ModelCardInfo:
    """What train.py knows about a run, for its card.

    ``dataset_name`` is the layout (``RGBNT201``, ...) or "synthetic"; ``dataset_id`` the Hub id of the dataset when
    it has one; ``base_model`` the Hub id of the pretrained tower (None for random-init towers); ``metrics`` maps
    ``demo_reid.metrics.METRIC_KEYS`` to percent values; ``research_only_data`` marks data released for research only.
    """

    model_type: str
    name: str
    repo_id: str
    dataset_name: str
    dataset_description: str
    backbone: str
    metrics: dict[str, float]
    selection: str = FINAL_EPOCH
    dataset_id: str | None = None
    base_model: str | None = None
    research_only_data: bool = True
    uses_text: bool = False
    uses_cameras: bool = False
    recipe: dict[str, Any] = field(default_factory=dict)


def eval_results(info: ModelCardInfo) -> list[EvalResult]:
    """mAP and Rank-1 on the test protocol (query vs gallery), with the epoch-selection rule in the metric name."""
    return [
        EvalResult(
            task_type=TASK_TYPE,
            task_name=TASK_NAME,
            dataset_type=info.dataset_id or info.dataset_name.lower(),
            dataset_name=info.dataset_name,
            dataset_split="test",  # the query / gallery protocol of the test identities
            metric_type=key.lower(),
            metric_name=f"{key} ({info.selection})",
            metric_value=round(float(info.metrics[key]), 2),
            metric_args={"selection": info.selection, "unit": "percent"},
        )
        for key in HEADLINE_METRICS
        if info.metrics.get(key) is not None
    ]


def usage_snippet(info: ModelCardInfo) -> list[str]:
    """Python that embeds one image triple with the checkpoint's processor and model."""
    camera = ", camera_ids=[0]" if info.uses_cameras else ""
    text = ("inputs = processor(images=images, text=[\"caption of the RGB image\", \"\", \"\"]" + camera + ")  "
            "# one caption per image, \"\" if none") if info.uses_text else f"inputs = processor(images=images{camera})"
    return [
        "```python",
        "from PIL import Image",
        "from transformers import AutoModel, AutoProcessor",
        "",
        f'checkpoint = "{info.repo_id}"',
        "processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)",
        "model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()",
        "",
        'images = [Image.open("rgb.jpg"), Image.open("nir.jpg"), Image.open("tir.jpg")]  # None for a missing one',
        text,
        "embedding = model(**inputs).embeddings  # (1, D): rank a gallery by distance between L2-normalised embeddings",
        "```",
    ]


def build_model_card(info: ModelCardInfo) -> ModelCard:
    """The checkpoint's card: Hub metadata (model-index, base_model, license, ...) and the text below it."""
    text = MODEL_CARD_TEXT.get(info.model_type) or {
        "description": f"A multi-modal (RGB / NIR / TIR) object re-identification model ({info.model_type})",
        "tags": (), "sections": {}}
    if info.research_only_data:
        license_fields = dict(license="other", license_name="research-only")  # the card's Licence section says why
    else:
        license_fields = dict(license="apache-2.0")
    data = ModelCardData(
        model_name=info.name,
        base_model=info.base_model,
        library_name="transformers",
        pipeline_tag=TASK_TYPE,
        tags=["re-identification", "multi-modal", "rgb-nir-tir", *text["tags"]],
        datasets=[info.dataset_id] if info.dataset_id else None,
        eval_results=eval_results(info) or None,
        **license_fields,
    )
    lines = [
        f"# {info.name}",
        "",
        f"{text['description']}, trained with `train.py` of the demo-reid repository on {info.dataset_description}. "
        "The processor and the model load with `trust_remote_code=True`: their code is in this repository.",
        "",
        "## Use",
        "",
        *usage_snippet(info),
        "",
        "Give the three images of one object in the order RGB, near-infrared, thermal-infrared. The processor applies "
        "the evaluation transform (bilinear resize, mean = std = 0.5); a missing modality is `None`."
        + (" `camera_ids` is the camera's index in the training data (the model adds a learned camera embedding); "
           "leave it out for a camera the model never saw." if info.uses_cameras else ""),
        "",
        "## Results",
        "",
        f"Query / gallery protocol of the test identities, reported at the {info.selection}.",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {key} | {value:.2f} |" for key, value in info.metrics.items() if value is not None],
        "",
        "## Training",
        "",
        f"- Dataset: {info.dataset_description}",
        f"- Backbone: {info.backbone}",
        "",
    ]
    if info.recipe:
        lines += ["| option | value |", "|---|---|", *[f"| {key} | {value} |" for key, value in info.recipe.items()], ""]
    for title, body in text["sections"].items():
        lines += [f"## {title}", "", *body, ""]
    lines += ["## Licence", "", _licence_note(info), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _licence_note(info: ModelCardInfo) -> str:
    if info.research_only_data:
        return (f"These weights were trained on {info.dataset_name}, which its authors release for research use only. "
                "Use the model under the same terms; obtain the dataset from its authors.")
    return "Trained on synthetic data only; the weights are released under Apache-2.0, like the code."
