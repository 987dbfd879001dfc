"""The model card (README.md) written with every checkpoint: Hub metadata the Hub can read, then prose.

The metadata follows the Hub's model-card spec through ``huggingface_hub.ModelCardData``: ``model-index`` results
(mAP and Rank-1 on the dataset's query / gallery protocol, with the rule that picked the epoch), ``base_model``,
``datasets`` (the Hub id of the training data, when it came from the Hub), ``license`` (with ``license_name`` and
``license_link`` to the ``LICENSE.md`` written beside the card for research-only data), ``library_name``,
``pipeline_tag`` (the task of the checkpoint's own pipeline, ``pipeline_reid.py``) and ``tags``. The text says what
the model is, how to use it (the pipeline; the processor and the model), the recipe and the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from pipeline_reid import TASK as PIPELINE_TASK

from ..models import card_text

__all__ = ["TOWER_LICENCES", "ModelCardInfo", "build_model_card", "licence_text", "save_model_card", "FINAL_EPOCH",
           "BEST_ON_TEST", "LICENCE_FILE", "best_on_test_label"]

# How the reported epoch was chosen (train.py --select-best-on-test); shown in the card and in model-index.
FINAL_EPOCH = "final epoch"
BEST_ON_TEST = "best epoch selected on TEST split (optimistic)"


def best_on_test_label(metric: str) -> str:
    """The selection label of a checkpoint chosen by ``metric`` on the evaluation (query / gallery = TEST) split,
    for any metric or save interval (``--load-best-model-at-end``); :data:`BEST_ON_TEST` is the per-epoch mAP one."""
    return f"best checkpoint by {metric} selected on TEST split (optimistic)"


TASK_TYPE = PIPELINE_TASK  # the Hub task of an embedding model (ReID has no task id of its own), as the pipeline's
LICENCE_FILE = "LICENSE.md"  # the terms of a model trained on research-only data, linked from the card's metadata
TASK_NAME = "Multi-modal object re-identification"
HEADLINE_METRICS = ("mAP", "Rank-1")  # the two numbers every ReID paper reports; in model-index

# The image towers' own licences, by tower family (configuration_reid.BACKBONE_MODEL_TYPES): a model fine-tuned from a
# tower is a derivative of its weights, so the card names them. Where a licence could not be checked here, it says so.
TOWER_LICENCES = {
    "clip": ("OpenAI CLIP", "MIT"),
    "metaclip_2": ("MetaCLIP 2", "CC-BY-NC-4.0 as its Hub model cards list it (not verified here: read the "
                                 "checkpoint's own card)"),
    "siglip": ("SigLIP", "Apache-2.0"),
    "siglip2": ("SigLIP 2", "Apache-2.0"),
    "dinov2": ("DINOv2", "Apache-2.0"),
    "dinov2_with_registers": ("DINOv2 with registers", "Apache-2.0"),
    "dinov3_vit": ("DINOv3 ViT", "the DINOv3 License, not Apache-2.0 "
                                 "(https://ai.meta.com/resources/models-and-libraries/dinov3-license/)"),
    "vit": ("ViT (ImageNet-21k)", "Apache-2.0"),
}
# Tower licences that let the weights of a model trained on synthetic data stay Apache-2.0.
PERMISSIVE_TOWER_LICENCES = ("MIT", "Apache-2.0")


@dataclass
class ModelCardInfo:
    """What train.py knows about a run, for its card.

    ``dataset_name`` is the layout (``RGBNT201``, ...) or "synthetic"; ``dataset_id`` the Hub id of the dataset when
    it came from the Hub (``dataset_revision`` the revision asked for); ``base_model`` the Hub id of the pretrained
    tower (None for random-init towers); ``metrics`` maps ``mmreid.metrics.METRIC_KEYS`` to percent values;
    ``research_only_data`` marks data released for research only; ``in_progress`` describes an intermediate
    checkpoint ("step 3 of 6"; None for the final model); ``tower`` is the image tower's family (a key of
    :data:`TOWER_LICENCES`), ``text_tower`` the ``--text-backbone`` a model read captions with, if any;
    ``tower_tuning`` says what of the image tower trained (``train.py --tower-tuning``,
    :func:`mmreid.training.tuning.describe_tuning`).
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
    dataset_revision: str | None = None
    base_model: str | None = None
    research_only_data: bool = True
    uses_text: bool = False
    uses_cameras: bool = False
    recipe: dict[str, Any] = field(default_factory=dict)
    in_progress: str | None = None
    tower: str | None = None
    text_tower: str | None = None
    tower_tuning: str | None = None


def eval_results(info: ModelCardInfo) -> list[EvalResult]:
    """mAP and Rank-1 on the test protocol (query vs gallery), with the epoch-selection rule in the metric name."""
    return [
        EvalResult(
            task_type=TASK_TYPE,
            task_name=TASK_NAME,
            dataset_type=info.dataset_id or info.dataset_name.lower(),
            dataset_name=info.dataset_name,
            dataset_split="test",  # the query / gallery protocol of the test identities
            dataset_revision=info.dataset_revision if info.dataset_id else None,
            metric_type=key.lower(),
            metric_name=f"{key} ({info.selection})",
            metric_value=round(float(info.metrics[key]), 2),
            metric_args={"selection": info.selection, "unit": "percent"},
        )
        for key in HEADLINE_METRICS
        if info.metrics.get(key) is not None
    ]


def usage_snippet(info: ModelCardInfo) -> list[str]:
    """Python that embeds one image triple with the checkpoint's pipeline, then with its processor and model."""
    camera = ", camera_ids=[0]" if info.uses_cameras else ""
    captions = '["caption of the RGB image", "", ""]'  # one per image, "" if none
    text = f", text={captions}" if info.uses_text else ""
    return [
        "```python",
        "import torch",
        "from PIL import Image",
        "from transformers import AutoModel, AutoProcessor, pipeline",
        "",
        f'checkpoint = "{info.repo_id}"',
        'images = [Image.open("rgb.jpg"), Image.open("nir.jpg"), Image.open("tir.jpg")]  # None for a missing one',
        "",
        "# The pipeline: one [rgb, nir, tir] triple (or a list of triples) in, one result (or a list) out",
        f'pipe = pipeline("{PIPELINE_TASK}", model=checkpoint, trust_remote_code=True)',
        f"result = pipe(images{camera}{text})",
        'embedding = result["embedding"]  # (D,): rank a gallery by distance between L2-normalised embeddings',
        "",
        "# The same with the processor and the model",
        "processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)",
        "model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()",
        f"inputs = processor(images=images{camera}{text})",
        "with torch.no_grad():",
        "    embeddings = model(**inputs).embeddings  # (1, D)",
        "```",
    ]


def build_model_card(info: ModelCardInfo) -> ModelCard:
    """The checkpoint's card: Hub metadata (model-index, base_model, license, ...) and the text below it."""
    text = card_text(info.model_type)  # the registry's text of a built-in model, a generic one otherwise
    tower_licence = TOWER_LICENCES.get(info.tower, (None, "Apache-2.0"))[1]
    if info.research_only_data:  # the terms are in LICENSE.md (save_model_card), summarised in the Licence section
        license_fields = dict(license="other", license_name="research-only", license_link=LICENCE_FILE)
    elif tower_licence not in PERMISSIVE_TOWER_LICENCES:
        license_fields = dict(license="other", license_name=f"{info.tower}-licence")
    else:
        license_fields = dict(license="apache-2.0")
    data = ModelCardData(
        model_name=info.name,
        base_model=info.base_model,
        library_name="transformers",
        pipeline_tag=PIPELINE_TASK,
        tags=["re-identification", "multi-modal", "rgb-nir-tir", *text.tags],
        datasets=[info.dataset_id] if info.dataset_id else None,
        eval_results=eval_results(info) or None,
        **license_fields,
    )
    lines = [
        f"# {info.name}",
        "",
        f"{text.description}, trained with `train.py` of the mmreid repository on {info.dataset_description}. "
        "The pipeline, the processor and the model load with `trust_remote_code=True`: their code is in this "
        "repository.",
        "",
        *([f"**Training in progress**: this revision is the checkpoint at {info.in_progress}; the results come with "
           "the final model.", ""] if info.in_progress else []),
        "## Use",
        "",
        *usage_snippet(info),
        "",
        "Give the three images of one object in the order RGB, near-infrared, thermal-infrared (PIL images, arrays, "
        "or paths for the pipeline). The processor applies the evaluation transform (bilinear resize, the mean / std "
        "the model was trained with, in `preprocessor_config.json`); a missing modality is `None`. The pipeline also returns the model's `expert_weights` when it has "
        "experts."
        + (" `camera_ids` is the camera's index in the training data (the model adds a learned camera embedding); "
           "leave it out for a camera the model never saw." if info.uses_cameras else ""),
        "",
    ]
    if info.metrics:
        lines += [
            "## Results",
            "",
            f"Query / gallery protocol of the test identities, reported at the {info.selection}.",
            "",
            "| metric | value |",
            "|---|---|",
            *[f"| {key} | {value:.2f} |" for key, value in info.metrics.items() if value is not None],
            "",
        ]
    lines += [
        "## Training",
        "",
        f"- Dataset: {info.dataset_description}",
        f"- Backbone: {info.backbone}",
        *([f"- Image tower: {TOWER_LICENCES[info.tower][0]}, licence: {TOWER_LICENCES[info.tower][1]}"]
          if info.tower in TOWER_LICENCES else []),
        *([f"- Text tower: {info.text_tower} (frozen; a learned bridge maps its sentence embedding to the image "
            "features)"] if info.text_tower else []),
        *([f"- Tower tuning: {info.tower_tuning}"] if info.tower_tuning else []),
        "",
    ]
    if info.recipe:
        lines += ["| option | value |", "|---|---|", *[f"| {key} | {value} |" for key, value in info.recipe.items()], ""]
    for title, body in text.sections.items():
        lines += [f"## {title}", "", *body, ""]
    lines += ["## Licence", "", _licence_note(info), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _licence_note(info: ModelCardInfo) -> str:
    tower = ""
    if info.tower in TOWER_LICENCES:
        name, licence = TOWER_LICENCES[info.tower]
        tower = f" The image tower was initialised from {name} weights, released under {licence}; its terms apply too."
    if info.research_only_data:
        return (f"These weights were trained on {info.dataset_name}, which its authors release for research use only. "
                f"Use the model under the same terms ([{LICENCE_FILE}]({LICENCE_FILE})); obtain the dataset from its "
                "authors." + tower)
    if info.tower in TOWER_LICENCES and TOWER_LICENCES[info.tower][1] not in PERMISSIVE_TOWER_LICENCES:
        return "Trained on synthetic data only; the code is released under Apache-2.0, the weights are not:" + tower
    return "Trained on synthetic data only; the weights are released under Apache-2.0, like the code." + tower


def licence_text(info: ModelCardInfo) -> str | None:
    """The terms ``LICENSE.md`` states for a model trained on research-only data (None otherwise: Apache-2.0)."""
    if not info.research_only_data:
        return None
    return "\n".join([
        f"# Terms of use of {info.name}",
        "",
        f"The weights in this repository were trained on {info.dataset_name}. Its images are released by their "
        "authors for research use only, and the weights carry the same restriction:",
        "",
        "- use them for non-commercial research only, and only if you may use the dataset under its authors' terms;",
        "- cite the dataset's paper in any work that uses them;",
        "- redistribute them only under these same terms.",
        "",
        "The source code files of this repository (`*.py`) are released under the Apache License 2.0.",
        "",
    ])


def save_model_card(info: ModelCardInfo, folder: str | Path) -> None:
    """``README.md`` (the card) and, for research-only data, the ``LICENSE.md`` its metadata links to."""
    folder = Path(folder)
    build_model_card(info).save(folder / "README.md")
    terms = licence_text(info)
    if terms is not None:
        (folder / LICENCE_FILE).write_text(terms)
