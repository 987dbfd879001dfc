"""Configuration of NEXT (arXiv 2505.20001): text-modulated multi-grained experts for multi-modal object ReID."""

from transformers import AutoConfig, PretrainedConfig

try:
    from .configuration_reid import (
        CLIP_B16_TEXT_SHAPES,
        DUAL_MODEL_TYPES,
        MODALITY_CAPTION_PREFIXES,
        ReIDConfig,
        caption_prefixes,
        check_choice,
        check_text_prompts,
        parse_tower_config,
        positive_int,
    )
except ImportError:  # imported as a top-level module from a checkout
    from configuration_reid import (
        CLIP_B16_TEXT_SHAPES,
        DUAL_MODEL_TYPES,
        MODALITY_CAPTION_PREFIXES,
        ReIDConfig,
        caption_prefixes,
        check_choice,
        check_text_prompts,
        parse_tower_config,
        positive_int,
    )

# Choices of NEXT's switches; the first of each is the default (docs/next.md says where each comes from).
SEMANTIC_EXPERT_FORMS = ("token_mlp", "attention_pool")
SALIENCY_TYPES = ("router", "cls_dot")
NEXT_INFERENCE_FEATURES = ("final", "all")
SUPERVISED_HEADS = ("final", "all")
# The text towers NEXT reads captions with: the text halves of the dual checkpoints (CLIP's default first).
TEXT_TOWER_MODEL_TYPES = tuple(halves[1] for halves in DUAL_MODEL_TYPES.values())
# The text towers learnable prompt vectors suit (`num_text_prompts`): those pooled at the end-of-text token and
# projected, as IDEA's CLIP; SigLIP's read the last position through an attention head, where IDEA's pooling has no
# counterpart.
PROMPTABLE_TEXT_TOWERS = ("clip_text_model", "metaclip_2_text_model")


class NextConfig(ReIDConfig):
    r"""
    Configuration of a [`NextModel`]: one image tower shared by the RGB, NIR and TIR images of a triple (CLIP in the
    paper; any family of `BACKBONE_MODEL_TYPES`), a frozen text tower for the captions (CLIP's in the paper; a CLIP,
    MetaCLIP 2, SigLIP or SigLIP 2 text tower), Text-Modulated Semantic Experts (TMSE), Context-Shared Structure Experts (CSSE)
    and Multi-Grained Feature Aggregation (MGFA). The image tower and head options are [`ReIDConfig`]'s (the tower
    must be CLIP's: text and patches are compared in its projection space), among them the retrieval feature
    `inference_features`: `"final"` (default; every abstract: MGFA yields "the final identity representations") =
    the MGFA output, concat(semantic, structure); `"all"` (our earlier choice, after DeMo's) = concat(class tokens,
    final). NEXT's own:

    Args:
        text_config (`dict | PretrainedConfig | None`, *optional*, defaults to `None`):
            The frozen text tower: a text config of `TEXT_TOWER_MODEL_TYPES` (`CLIPTextConfig`, `SiglipTextConfig`,
            ...), its dict, or a full dual config (its text half; CLIP's with the parent's `projection_dim`); None
            gives CLIP ViT-B/16's text shapes. Its vocabulary and special token ids must be those of the tokenizer
            saved with the model; its sentence embedding the size of the image features unless `text_bridge`.
        text_bridge (`bool`, *optional*, defaults to `False`):
            A learned Linear layer from the text tower's sentence embedding to the image feature space (ours), for a
            text tower that was not trained with the image tower (`train.py --text-backbone`, e.g. DINOv3 + CLIP
            text): the cosine between caption and patch embeddings means nothing across two spaces never aligned,
            whatever their sizes, so the bridge learns the alignment (it trains with the heads; the text tower stays
            frozen). False: the text tower is the image tower's own dual half (CLIP's, as in the paper).
        num_semantic_experts (`int`, *optional*, defaults to `3`):
            N_s, the TMSE experts; each reads its own caption sentences and selects its own patches.
        num_structure_experts (`int`, *optional*, defaults to `3`):
            N_c, the CSSE experts behind the soft router the modalities share.
        structure_slots_per_expert (`int`, *optional*, defaults to `4`):
            Soft-MoE slots each structure expert processes (our choice; the figure shows no slots).
        tokens_per_expert (`int`, *optional*, defaults to `16`):
            k, the patches each semantic expert keeps per modality (3k tokens in all); at most the patches per image.
        semantic_expert (`str`, *optional*, defaults to `"token_mlp"`):
            Form of a TMSE expert. `"token_mlp"` (reported: a review of arXiv v3): E(F) = Dropout(MLP(LN(F))) + F
            applied to each of the expert's 3k sampled tokens, whose selection-weighted mean is the expert's feature
            s_e (the mean is ours). `"attention_pool"` (our earlier form): a learned per-expert query attends to the
            3k tokens, then a residual pre-norm MLP. Either way the selection weights k * softmax(gamma) multiply the
            tokens after every LayerNorm, so the text modulation gets gradients.
        semantic_expert_dropout (`float`, *optional*, defaults to `0.1`):
            Dropout on the output of each semantic expert's MLP, before its residual (reported: a review of arXiv v3
            names the dropout; 0.1, the rate of DeMo's HDM, is ours, no rate being reported). 0: no dropout, as
            the earlier experts.
        saliency (`str`, *optional*, defaults to `"router"`):
            The saliency alpha_m over a modality's patches. `"router"` (reported: a review of arXiv v3, per-modality
            "sampling paths" R_rgb, R_nir, R_tir): softmax over the patches of a learned score w_m . LN(F_m,i), one
            router per modality shared by the experts. `"cls_dot"` (ours, parameter-free): softmax of the scaled
            class-token-to-patch dot product R_m . F_m,i / sqrt(C).
        supervised_heads (`str`, *optional*, defaults to `"final"`):
            Features with a BN-neck, classifier and ID + triplet loss. `"final"` (figure: one ID + triplet box fed by
            the two MGFA outputs): the final feature only. `"all"` (our earlier choice): `cls`, `semantic`,
            `structure` and `final`.
        caption_sentences_per_expert (`int | None`, *optional*, defaults to `None`):
            Sentences of each modality's caption a semantic expert reads in training (the data collator draws them;
            evaluation reads the whole caption). None (figure: its example highlights about 2, 2 and 4 of 5
            sentences): a count drawn uniformly in [1, n] per expert and modality, n the caption's sentences. An int:
            that fixed count (our earlier choice: 2).
        use_tmse (`bool`, *optional*, defaults to `True`):
            Build the semantic experts (the only branch that reads text); an ablation switch.
        use_csse (`bool`, *optional*, defaults to `True`):
            Build the structure experts; an ablation switch.
        use_text (`bool`, *optional*, defaults to `True`):
            Feed the captions to the semantic experts; False gives every expert its learned "no text" embedding and
            builds no text tower. No effect without TMSE.
        caption_prefix (`str | None`, *optional*, defaults to `None`):
            None (NEXT's sources name no prefix): the captions as they are. `"rgbnt201"`, `"rgbnt100"` or
            `"msvr310"`: IDEA's choice for its authors' family, "An image of a " + the modality's phrase of that
            dataset's captions in IDEA's code (e.g. "person in the near infrared spectrum, capturing contrasts and
            surface reflectance: ") before every caption, a missing one included (then the prefix alone, not "no
            text"); the collator and the processor add it (docs/idea.md).
        num_text_prompts (`int`, *optional*, defaults to `0`):
            0 (NEXT's figure: the frozen text tower read at its "Text CLS" only): the projected end-of-text token.
            P > 0: IDEA's choice for its authors' family (`TEXT_PROMPT`), P learnable vectors added to the caption's
            token embeddings at positions 5, 6, ... of the frozen tower, and the sentence embedding the mean of the
            projected outputs at the end-of-text token and the P prompt positions; the vectors train at the heads'
            rate, the tower stays frozen. With `caption_prefix`, the prefix carries one placeholder "X " per vector
            where they land, as IDEA's captions do; without, they land on the caption's own words (as IDEA's with
            `PREFIX: False`). Needs a CLIP-like text tower (CLIP, MetaCLIP 2) that reads the captions.
    """

    model_type = "next_reid"
    inference_feature_choices = NEXT_INFERENCE_FEATURES
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        *,
        text_config: dict | PretrainedConfig | None = None,
        text_bridge: bool = False,
        num_semantic_experts: int = 3,
        num_structure_experts: int = 3,
        structure_slots_per_expert: int = 4,
        tokens_per_expert: int = 16,
        semantic_expert: str = "token_mlp",
        semantic_expert_dropout: float = 0.1,
        saliency: str = "router",
        supervised_heads: str = "final",
        caption_sentences_per_expert: int | None = None,
        use_tmse: bool = True,
        use_csse: bool = True,
        use_text: bool = True,
        caption_prefix: str | None = None,
        num_text_prompts: int = 0,
        **kwargs,
    ):
        self.text_config = parse_tower_config(text_config, "text_config", TEXT_TOWER_MODEL_TYPES, CLIP_B16_TEXT_SHAPES)
        self.text_bridge = bool(text_bridge)
        self.num_semantic_experts = positive_int("num_semantic_experts", num_semantic_experts)
        self.num_structure_experts = positive_int("num_structure_experts", num_structure_experts)
        self.structure_slots_per_expert = positive_int("structure_slots_per_expert", structure_slots_per_expert)
        self.tokens_per_expert = positive_int("tokens_per_expert", tokens_per_expert)
        for name, value, choices in (
            ("semantic_expert", semantic_expert, SEMANTIC_EXPERT_FORMS),
            ("saliency", saliency, SALIENCY_TYPES),
            ("supervised_heads", supervised_heads, SUPERVISED_HEADS),
        ):
            check_choice(name, value, choices)
        if isinstance(semantic_expert_dropout, bool) or not 0.0 <= semantic_expert_dropout < 1.0:
            raise ValueError(f"semantic_expert_dropout must be a probability in [0, 1), got {semantic_expert_dropout!r}")
        self.semantic_expert = semantic_expert
        self.semantic_expert_dropout = float(semantic_expert_dropout)
        self.saliency = saliency
        self.supervised_heads = supervised_heads
        self.caption_sentences_per_expert = (
            None if caption_sentences_per_expert is None
            else positive_int("caption_sentences_per_expert", caption_sentences_per_expert)
        )
        self.use_tmse = bool(use_tmse)
        self.use_csse = bool(use_csse)
        self.use_text = bool(use_text)
        if caption_prefix is not None:
            check_choice("caption_prefix", caption_prefix, tuple(MODALITY_CAPTION_PREFIXES))
        self.caption_prefix = caption_prefix
        self.num_text_prompts = check_text_prompts(num_text_prompts, self.text_config)
        super().__init__(**kwargs)

        rows, cols = self.patch_grid
        if self.tokens_per_expert > rows * cols:
            raise ValueError(
                f"tokens_per_expert={self.tokens_per_expert} exceeds the {rows * cols} patches per modality of "
                f"image_size={self.image_size} (patch grid {rows}x{cols})"
            )
        if self.num_text_prompts and not (self.uses_text and self.text_config.model_type in PROMPTABLE_TEXT_TOWERS):
            raise ValueError(
                f"num_text_prompts={self.num_text_prompts} needs a CLIP or MetaCLIP 2 text tower reading the captions "
                f"(got text_config.model_type={self.text_config.model_type!r}, use_text={self.use_text}, "
                f"use_tmse={self.use_tmse}); use num_text_prompts=0"
            )
        text_dim = self.text_feature_dim
        if self.uses_text and self.feature_dim != text_dim and not self.text_bridge:
            field = "projection_size" if self.text_config.model_type.startswith("siglip") else "projection_dim"
            raise ValueError(
                f"the image feature size {self.feature_dim} must equal text_config.{field}={text_dim} (the text "
                "tower's sentence embedding): the text relevance is a cosine between text and patch embeddings; use "
                "the text tower of the image tower's own checkpoint, or text_bridge=True (train.py --text-backbone)"
            )

    @classmethod
    def from_backbone_config(cls, backbone_config: PretrainedConfig, text_backbone_config: PretrainedConfig | None = None,
                             **kwargs) -> "NextConfig":
        """As [`ReIDConfig.from_backbone_config`]. The text tower is `text_backbone_config`'s (a dual config or a text
        tower's; then `text_bridge` is on: the two towers were never trained together), else the text half of
        `backbone_config` when it is a dual config (CLIP's, as in the paper). Neither: `text_config` keeps CLIP
        ViT-B/16's text shapes (projecting to the image feature size), a placeholder only a model without text
        (`use_text=False`) may keep; `train.py` refuses a text-reading run without a text tower before it builds
        one."""
        if text_backbone_config is not None:
            kwargs.setdefault("text_config", text_backbone_config)
            kwargs.setdefault("text_bridge", True)
        elif getattr(backbone_config, "model_type", None) in DUAL_MODEL_TYPES:
            kwargs.setdefault("text_config", backbone_config)
        else:
            vision = parse_tower_config(backbone_config, "vision_config", cls.tower_model_types, {})
            width = getattr(vision, "projection_dim", None) or vision.hidden_size
            kwargs.setdefault("text_config", {**CLIP_B16_TEXT_SHAPES, "projection_dim": width})
        return super().from_backbone_config(backbone_config, **kwargs)

    @property
    def text_feature_dim(self) -> int:
        """Size of the text tower's sentence embedding: a CLIP-like tower's projection, SigLIP's head output."""
        text = self.text_config
        if text.model_type.startswith("siglip"):
            return text.projection_size
        return text.projection_dim

    @property
    def branch_names(self) -> tuple[str, ...]:
        """The enabled expert branches, in the order of the final feature."""
        return tuple(name for name, used in (("semantic", self.use_tmse), ("structure", self.use_csse)) if used)

    @property
    def head_names(self) -> tuple[str, ...]:
        """The supervised features (`logits` / `features` keys), in order. With `supervised_heads="all"`, `final` is
        supervised only with both branches (with one it would duplicate that branch's head)."""
        if self.supervised_heads == "final":
            return ("final",)
        branches = self.branch_names
        return ("cls", *branches, *(("final",) if len(branches) == 2 else ()))

    @property
    def caption_groups(self) -> int:
        """Caption sets per training sample (the family's collator reads it): one per semantic expert."""
        return self.num_semantic_experts

    @property
    def caption_sentences_per_group(self) -> int | None:
        """Sentences each set draws from each modality's caption (the family's collator reads it)."""
        return self.caption_sentences_per_expert

    @property
    def caption_prefixes(self) -> tuple[str, str, str] | None:
        """The text the collator and processor put before each modality's caption (`caption_prefix`), or None."""
        return caption_prefixes(self.caption_prefix, self.num_text_prompts)

    @property
    def uses_text(self) -> bool:
        """Whether captions reach the model: only the semantic experts read text."""
        return self.use_text and self.use_tmse


__all__ = ["NextConfig", "TEXT_TOWER_MODEL_TYPES", "SEMANTIC_EXPERT_FORMS", "SALIENCY_TYPES", "NEXT_INFERENCE_FEATURES",
           "SUPERVISED_HEADS", "PROMPTABLE_TEXT_TOWERS"]
