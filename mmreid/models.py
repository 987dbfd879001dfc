"""The registry of built-in models: one :class:`ModelEntry` per model, the only place outside a model's own files
that names it. ``train.py --model NAME`` (the factory), ``--help`` (one option group per model), the collator, the
processor and the model card read it; everything else reads the model's config.

What a model declares, built-in or remote code alike, is read from its config (docs/interfaces.md, "The model
contract"): ``uses_text`` (it reads captions: the run loads a tokenizer, batches carry captions, the checkpoint ships
the caption processor ``processing_reid.ReIDProcessor`` with the tokenizer), ``num_cameras`` (batches carry camera
ids), ``image_size``. Adding a built-in model: its ``configuration_x.py`` + ``modeling_x.py`` on the family base
(``configuration_reid.py`` / ``modeling_reid.py``), one entry below, its name in ``pyproject.toml``'s ``py-modules``
(and, if it wants one, a section ``x:`` in a preset of ``configs/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from configuration_demo import DeMoConfig
from configuration_idea import IdeaConfig
from configuration_next import NextConfig
from configuration_reid import ReIDConfig
from modeling_demo import DeMoModel
from modeling_idea import IdeaModel
from modeling_next import NextModel

__all__ = ["BUILTIN_MODELS", "FAMILY_OPTIONS_GROUP", "ModelCardText", "ModelEntry", "card_text"]


@dataclass(frozen=True)
class ModelCardText:
    """What a model's card says about the model: its first sentence, Hub tags, and extra sections (title ->
    Markdown lines)."""

    description: str
    tags: tuple[str, ...] = ()
    sections: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    """One built-in model: its ``--model`` name, config and model classes, the ``--help`` title of its options and
    its card text. The processor and the batch (captions, cameras) follow from the config (module docstring)."""

    name: str
    config_class: type
    model_class: type
    options_group: str
    card: ModelCardText

    @property
    def model_type(self) -> str:
        return self.config_class.model_type


# The options every model shares, shown once in --help.
FAMILY_OPTIONS_GROUP = (ReIDConfig, "model options of every model (ReIDConfig)")

NEXT_READING = [
    "The NEXT authors have not released code. This model implements their framework figure (TMSE, "
    "CSSE, MGFA) and the few further facts secondary sources report (a review of arXiv v3; readers' "
    "notes on arXiv v5); every other choice is ours, not the authors' (docs/next.md of the repository "
    "marks each one):",
    "",
    "- saliency: a learned sampling router per modality (LayerNorm + Linear to one score, softmax over "
    "the patches; reported);",
    "- the text modulation: one FC -> QuickGELU -> FC network per expert on the three concatenated "
    "caption-to-patch cosine maps, added to the saliency; each expert keeps the top-k patches of each "
    "modality, weighted by k x softmax of their scores (ours);",
    "- each semantic expert is Dropout(MLP(LN(F))) + F on its sampled tokens (reported), reduced to one "
    "feature by the selection-weighted mean (ours); the selection weights act after every "
    "normalisation, so the captions shape the trained model;",
    "- CSSE: Soft-MoE routing with several slots per structure expert; each expert's feature is the "
    "combine-weighted mean of its slot outputs; no balance loss (ours);",
    "- MGFA: one multi-head cross-attention per branch with the three class tokens as queries; the final "
    "feature concat(semantic, structure) is the retrieval feature and the one supervised with ID + "
    "triplet loss (figure);",
    "- captions: in training each semantic expert reads, of each modality's caption, a seeded random "
    "count of sentences uniform in [1, n] (figure: different counts; the distribution is ours); at test "
    "time the whole caption (reported: the text encoder runs at inference); a learned no-text embedding "
    "per expert and modality replaces missing captions (ours);",
    "- expert counts and k: chosen by a small sweep on the synthetic set (ours).",
]
NEXT_CITATION = [
    "```bibtex",
    "@article{li2026next,",
    "  title   = {NEXT: Multi-Grained Mixture of Experts via Text-Modulation for Multi-Modal Object "
    "Re-Identification},",
    "  author  = {Li, Shihao and Huang, Huaibo and Duan, Junxian and Zheng, Aihua and Tang, Jin and Ma, "
    "Jixin},",
    "  journal = {IEEE Transactions on Information Forensics and Security},",
    "  volume  = {21},",
    "  pages   = {8371--8384},",
    "  year    = {2026},",
    "  note    = {arXiv:2505.20001}",
    "}",
    "```",
]

IDEA_READING = [
    "This model computes what the IDEA authors' code (924973292/IDEA) computes; converted checkpoints of theirs give "
    "their test-time features (docs/idea.md of the repository says where each part comes from):",
    "",
    "- captions carry the authors' modality prefix, with one placeholder token per learnable prompt vector; the "
    "frozen CLIP text tower reads them with the prompt vectors added at positions 5, 6, ...;",
    "- the InverseNet maps each caption's global feature to one extra token of that modality's image sequence "
    "(with the camera embedding and its own position vector); its output is the textual global feature;",
    "- CDA samples the three patch maps at offsets shared by the modalities; the six global features attend to "
    "the samples, giving the visual (LOCAL_v) and textual (LOCAL_t) aggregates;",
    "- the retrieval feature is LOCAL_t, the one the authors report; the other test-time features are returned "
    "too (`feature_sets`).",
]
IDEA_CITATION = [
    "```bibtex",
    "@inproceedings{wang2025idea,",
    "  title     = {IDEA: Inverted Text with Cooperative Deformable Aggregation for Multi-Modal Object "
    "Re-Identification},",
    "  author    = {Wang, Yuhao and Lv, Yongfeng and Zhang, Pingping and Lu, Huchuan},",
    "  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},",
    "  year      = {2025}",
    "}",
    "```",
]

_ENTRIES = (
    ModelEntry(
        name="demo",
        config_class=DeMoConfig,
        model_class=DeMoModel,
        options_group="DeMo options (--model demo, DeMoConfig)",
        card=ModelCardText(
            description="DeMo (Decoupled Feature-Based Mixture of Experts, AAAI 2025) multi-modal (RGB / NIR / TIR) "
            "object re-identification model",
            tags=("demo",),
        ),
    ),
    ModelEntry(
        name="next",
        config_class=NextConfig,
        model_class=NextModel,
        options_group="NEXT options (--model next, NextConfig)",
        card=ModelCardText(
            description="NEXT (text-modulated multi-grained experts; IEEE TIFS 2026, arXiv 2505.20001) multi-modal "
            "(RGB / NIR / TIR) object re-identification model, in this repository's own implementation",
            tags=("next", "text-modulated"),
            sections={"Our reading of the paper": NEXT_READING, "Citation": NEXT_CITATION},
        ),
    ),
    ModelEntry(
        name="idea",
        config_class=IdeaConfig,
        model_class=IdeaModel,
        options_group="IDEA options (--model idea, IdeaConfig)",
        card=ModelCardText(
            description="IDEA (inverted text with cooperative deformable aggregation, CVPR 2025) multi-modal "
            "(RGB / NIR / TIR) object re-identification model",
            tags=("idea", "text-guided"),
            sections={"What the model computes": IDEA_READING, "Citation": IDEA_CITATION},
        ),
    ),
)
# --model name -> entry, in --help order.
BUILTIN_MODELS: dict[str, ModelEntry] = {entry.name: entry for entry in _ENTRIES}


def card_text(model_type: str) -> ModelCardText:
    """The card text of a built-in model by its ``model_type``; a generic one for any other (remote-code) model."""
    for entry in BUILTIN_MODELS.values():
        if entry.model_type == model_type:
            return entry.card
    return ModelCardText(f"A multi-modal (RGB / NIR / TIR) object re-identification model ({model_type})")
