"""Configuration of IDEA (CVPR 2025): inverted text with cooperative deformable aggregation for multi-modal object
ReID."""

from transformers import AutoConfig, PretrainedConfig

try:
    from .configuration_reid import (
        CLIP_B16_TEXT_SHAPES, MODALITIES, MODALITY_CAPTION_PREFIXES, ReIDConfig, check_choice, parse_tower_config,
        positive_int, PROMPT_POSITION, caption_prefixes, check_text_prompts,
    )
except ImportError:  # imported as a top-level module from a checkout
    from configuration_reid import (
        CLIP_B16_TEXT_SHAPES, MODALITIES, MODALITY_CAPTION_PREFIXES, ReIDConfig, check_choice, parse_tower_config,
        positive_int, PROMPT_POSITION, caption_prefixes, check_text_prompts,
    )

# Test-time features, named as the authors' code names them; the first is the reported one (their log line, IDEA
# issues #8 and #10): the textual aggregate of CDA.
IDEA_INFERENCE_FEATURES = ("LOCAL_t", "LOCAL_v", "LOCAL", "V_RGB", "V_NIR", "V_TIR", "T_RGB", "T_NIR", "T_TIR")
class IdeaConfig(ReIDConfig):
    r"""
    Configuration of an [`IdeaModel`]: one CLIP image tower shared by the RGB, NIR and TIR images of a triple, a
    frozen CLIP text tower with learnable prompt vectors, the InverseNet (IMFE) that turns each caption into one extra
    image token, and Cooperative Deformable Aggregation (CDA). The image tower and head options are [`ReIDConfig`]'s
    (the tower must be CLIP's); `inference_features` picks the retrieval feature among the authors' test-time
    features: `"LOCAL_t"` (default; the feature the authors report), `"LOCAL_v"`, `"LOCAL"` (both aggregates),
    or one modality's global feature `"V_RGB"` ... `"T_TIR"`. IDEA's own:

    Args:
        text_config (`dict | PretrainedConfig | None`, *optional*, defaults to `None`):
            The frozen text tower: a `CLIPTextConfig`, its dict, or a full `CLIPConfig` (its text half, with the
            parent's `projection_dim`); None gives CLIP ViT-B/16's text shapes. Its `projection_dim` must be the
            image tower's.
        num_text_prompts (`int`, *optional*, defaults to `2`):
            Learnable vectors added to the caption's token embeddings at positions 5, 6, ... (the "X" placeholders of
            the authors' prefix); the text's global feature is the mean of the end-of-text token's and theirs
            (`TEXT_PROMPT`: 2 for RGBNT201, 1 for RGBNT100 and MSVR310). 0: none.
        use_inverse (`bool`, *optional*, defaults to `True`):
            The InverseNet (`INVERSE`): an MLP maps the caption's global feature to one extra image token, whose
            output is the modality's textual global feature. False: the caption's global feature itself is.
        inverse_dropout (`float`, *optional*, defaults to `0.1`):
            Dropout of the InverseNet MLP (the authors' 0.1).
        use_cda (`bool`, *optional*, defaults to `True`):
            Cooperative Deformable Aggregation (`DA`): the six global features query points sampled from the three
            patch maps at offsets shared by the modalities, giving `LOCAL_v` and `LOCAL_t`. False: those are the
            concatenated global features.
        cda_offset_factor (`float`, *optional*, defaults to `5.0`):
            `OFF_FAC`, the range of the offsets in sampling-grid cells (5 RGBNT201, 21 RGBNT100, 25 MSVR310); 0
            leaves them unbounded.
        cda_kernel_size (`int`, *optional*, defaults to `4`):
            Kernel of the depthwise convolution that predicts the offsets; the reference points are the centres of
            its windows (the authors' 4).
        cda_stride (`int`, *optional*, defaults to `2`):
            Its stride (the authors' 2): a 16x8 patch map gives 7x3 sampling points per modality.
        concatenated_heads (`bool`, *optional*, defaults to `True`):
            `DIRECT`: one head on the concatenated visual and one on the concatenated textual global features (1 for
            RGBNT201 and MSVR310); False: one head per modality and kind (0 for RGBNT100). The CDA heads are kept
            either way.
        caption_prefix (`str | None`, *optional*, defaults to `"rgbnt201"`):
            Whose modality prefix the captions get (`PREFIX: True`; the data collator and the processor put it
            before every caption, a missing one included): `"rgbnt201"` (person), `"rgbnt100"` or `"msvr310"`
            (vehicle; the authors' two vehicle sets word it differently); None: the captions as they are
            (`PREFIX: False`). Either way the prompt vectors are added at positions 5, 6, ....
    """

    model_type = "idea_reid"
    inference_feature_choices = IDEA_INFERENCE_FEATURES
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}
    tower_model_types = ("clip_vision_model",)
    uses_text = True
    caption_sampling = False  # the authors train on whole captions, one per modality

    def __init__(
        self,
        *,
        text_config: dict | PretrainedConfig | None = None,
        num_text_prompts: int = 2,
        use_inverse: bool = True,
        inverse_dropout: float = 0.1,
        use_cda: bool = True,
        cda_offset_factor: float = 5.0,
        cda_kernel_size: int = 4,
        cda_stride: int = 2,
        concatenated_heads: bool = True,
        caption_prefix: str | None = "rgbnt201",
        **kwargs,
    ):
        self.text_config = parse_tower_config(text_config, "text_config", ("clip_text_model",), CLIP_B16_TEXT_SHAPES)
        self.num_text_prompts = check_text_prompts(num_text_prompts, self.text_config)
        if isinstance(inverse_dropout, bool) or not 0.0 <= inverse_dropout < 1.0:
            raise ValueError(f"inverse_dropout must be a probability in [0, 1), got {inverse_dropout!r}")
        if isinstance(cda_offset_factor, bool) or cda_offset_factor < 0:
            raise ValueError(f"cda_offset_factor must be >= 0, got {cda_offset_factor!r}")
        self.use_inverse = bool(use_inverse)
        self.inverse_dropout = float(inverse_dropout)
        self.use_cda = bool(use_cda)
        self.cda_offset_factor = float(cda_offset_factor)
        self.cda_kernel_size = positive_int("cda_kernel_size", cda_kernel_size)
        self.cda_stride = positive_int("cda_stride", cda_stride)
        self.concatenated_heads = bool(concatenated_heads)
        if caption_prefix is not None:
            check_choice("caption_prefix", caption_prefix, tuple(MODALITY_CAPTION_PREFIXES))
        self.caption_prefix = caption_prefix
        super().__init__(**kwargs)

        text = self.text_config
        if self.feature_dim != text.projection_dim:
            raise ValueError(
                f"vision_config.projection_dim={self.feature_dim} must equal text_config.projection_dim="
                f"{text.projection_dim}: the text's global feature and the image tokens share one space"
            )
        if self.use_cda:
            rows, cols = self.cda_samples
            if rows < 2 or cols < 2:
                grid = self.patch_grid
                raise ValueError(
                    f"cda_kernel_size={self.cda_kernel_size} with cda_stride={self.cda_stride} gives {rows}x{cols} "
                    f"sampling points on the {grid[0]}x{grid[1]} patch grid of image_size={self.image_size}; CDA "
                    "needs at least 2 in each direction (its offsets are scaled by 1 / (points - 1)): lower them"
                )

    @classmethod
    def from_backbone_config(cls, backbone_config: PretrainedConfig, **kwargs) -> "IdeaConfig":
        """As [`ReIDConfig.from_backbone_config`], for a full `CLIPConfig`: its vision half is the image tower and its
        text half the text tower."""
        if getattr(backbone_config, "model_type", None) != "clip":
            raise ValueError(
                "backbone_config must be a full CLIPConfig (image and text towers) for IDEA, got model_type="
                f"{getattr(backbone_config, 'model_type', type(backbone_config).__name__)!r}"
            )
        return super().from_backbone_config(backbone_config, text_config=backbone_config, **kwargs)

    @property
    def caption_prefixes(self) -> tuple[str, str, str] | None:
        """The text before each modality's caption: "An image of a ", one "X " per prompt vector, the modality's
        phrase (the authors' data/datasets/*_Text.py)."""
        return caption_prefixes(self.caption_prefix, self.num_text_prompts)

    @property
    def cda_samples(self) -> tuple[int, int]:
        """Sampling points (rows, cols) CDA takes from each modality's patch map."""
        return tuple((size - self.cda_kernel_size) // self.cda_stride + 1 for size in self.patch_grid)

    @property
    def head_names(self) -> tuple[str, ...]:
        """The supervised features (`logits` / `features` keys), in the order of the authors' training outputs."""
        if self.concatenated_heads:
            names = ("V", "T")
        else:
            names = tuple(f"{kind}_{m.upper()}" for kind in "VT" for m in MODALITIES)
        return names + (("LOCAL_v", "LOCAL_t") if self.use_cda else ())


__all__ = ["IdeaConfig", "IDEA_INFERENCE_FEATURES", "PROMPT_POSITION"]
