"""Configuration of NEXT (arXiv 2505.20001): text-modulated multi-grained experts for multi-modal object ReID."""

from transformers import AutoConfig, PretrainedConfig

try:
    from .configuration_demo import ReIDConfig, parse_tower_config, positive_int
except ImportError:  # imported as a top-level module from a checkout
    from configuration_demo import ReIDConfig, parse_tower_config, positive_int

# Shapes of OpenAI CLIP ViT-B/16's text tower (CLIPTextConfig's defaults, written out so they do not drift).
CLIP_B16_TEXT_SHAPES = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    projection_dim=512,
    hidden_act="quick_gelu",
)


class NextConfig(ReIDConfig):
    r"""
    Configuration of a [`NextModel`]: one CLIP image tower shared by the RGB, NIR and TIR images of a triple, a frozen
    CLIP text tower for the captions, Text-Modulated Semantic Experts (TMSE), Context-Shared Structure Experts (CSSE)
    and Multi-Grained Feature Aggregation (MGFA). The image tower and head options are [`ReIDConfig`]'s (the tower
    must be CLIP's: text and patches are compared in its projection space); NEXT's own:

    Args:
        text_config (`dict | PretrainedConfig | None`, *optional*, defaults to `None`):
            The frozen text tower: a `CLIPTextConfig`, its dict, or a full `CLIPConfig` (its text half, with the
            parent's `projection_dim`); None gives CLIP ViT-B/16's text shapes. Its vocabulary and special token ids
            must be those of the tokenizer saved with the model, its `projection_dim` the image tower's.
        num_semantic_experts (`int`, *optional*, defaults to `3`):
            N_s, the TMSE experts; each reads its own caption sentences and selects its own patches.
        num_structure_experts (`int`, *optional*, defaults to `3`):
            N_c, the CSSE experts behind the soft router the modalities share.
        structure_slots_per_expert (`int`, *optional*, defaults to `4`):
            Soft-MoE slots each structure expert processes (our choice; the figure shows no slots).
        tokens_per_expert (`int`, *optional*, defaults to `16`):
            k, the patches each semantic expert keeps per modality (3k tokens in all); at most the patches per image.
        caption_sentences_per_expert (`int`, *optional*, defaults to `2`):
            Sentences of each modality's caption a semantic expert reads in training (drawn by the data collator;
            evaluation reads the whole caption).
        use_tmse (`bool`, *optional*, defaults to `True`):
            Build the semantic experts (the only branch that reads text); an ablation switch.
        use_csse (`bool`, *optional*, defaults to `True`):
            Build the structure experts; an ablation switch.
        use_text (`bool`, *optional*, defaults to `True`):
            Feed the captions to the semantic experts; False gives every expert its learned "no text" embedding and
            builds no text tower. No effect without TMSE.
    """

    model_type = "next_reid"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}
    tower_model_types = ("clip_vision_model",)

    def __init__(
        self,
        *,
        text_config: dict | PretrainedConfig | None = None,
        num_semantic_experts: int = 3,
        num_structure_experts: int = 3,
        structure_slots_per_expert: int = 4,
        tokens_per_expert: int = 16,
        caption_sentences_per_expert: int = 2,
        use_tmse: bool = True,
        use_csse: bool = True,
        use_text: bool = True,
        **kwargs,
    ):
        self.text_config = parse_tower_config(text_config, "text_config", ("clip_text_model",), CLIP_B16_TEXT_SHAPES)
        self.num_semantic_experts = positive_int("num_semantic_experts", num_semantic_experts)
        self.num_structure_experts = positive_int("num_structure_experts", num_structure_experts)
        self.structure_slots_per_expert = positive_int("structure_slots_per_expert", structure_slots_per_expert)
        self.tokens_per_expert = positive_int("tokens_per_expert", tokens_per_expert)
        self.caption_sentences_per_expert = positive_int("caption_sentences_per_expert", caption_sentences_per_expert)
        self.use_tmse = bool(use_tmse)
        self.use_csse = bool(use_csse)
        self.use_text = bool(use_text)
        super().__init__(**kwargs)

        rows, cols = self.patch_grid
        if self.tokens_per_expert > rows * cols:
            raise ValueError(
                f"tokens_per_expert={self.tokens_per_expert} exceeds the {rows * cols} patches per modality of "
                f"image_size={self.image_size} (patch grid {rows}x{cols})"
            )
        text_dim = self.text_config.projection_dim
        if self.feature_dim != text_dim:
            raise ValueError(
                f"vision_config.projection_dim={self.feature_dim} must equal text_config.projection_dim={text_dim}: "
                "the text relevance is a cosine between text and patch embeddings"
            )

    @classmethod
    def from_backbone_config(cls, backbone_config: PretrainedConfig, **kwargs) -> "NextConfig":
        """As [`ReIDConfig.from_backbone_config`], for a full `CLIPConfig`: its vision half is the image tower and its
        text half the text tower."""
        if getattr(backbone_config, "model_type", None) != "clip":
            raise ValueError(
                "backbone_config must be a full CLIPConfig (image and text towers) for NEXT, got model_type="
                f"{getattr(backbone_config, 'model_type', type(backbone_config).__name__)!r}"
            )
        return super().from_backbone_config(backbone_config, text_config=backbone_config, **kwargs)

    @property
    def uses_text(self) -> bool:
        """Whether captions reach the model: only the semantic experts read text."""
        return self.use_text and self.use_tmse


__all__ = ["NextConfig"]
