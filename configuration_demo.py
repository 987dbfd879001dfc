"""Configuration of DeMo (Decoupled Feature-Based Mixture of Experts, AAAI 2025) for multi-modal object ReID."""

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

BACKBONE_MODEL_TYPES = {"clip": "clip_vision_model", "vit": "vit"}
GATING_TYPES = ("attention", "simple_add", "simple_concat")
# Shapes of the ViT-B/16 image tower (OpenAI CLIP and ImageNet ViT alike); CLIP adds a 512-d projection.
VIT_B16_SHAPES = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16, image_size=224
)
INFERENCE_FEATURES = ("all", "ori", "moe")
HEAD_INITS = ("pytorch", "normal")


class DeMoConfig(PretrainedConfig):
    r"""
    Configuration of a [`DeMoModel`]: a vision tower shared by the RGB, NIR and TIR images of a triple, followed by
    the Patch-Integrated Feature Extractor (PIFE), the Hierarchical Decoupling Module (HDM) and the
    Attention-Triggered Mixture of Experts (ATMoE).

    Args:
        vision_config (`CLIPVisionConfig`, `ViTConfig` or `dict`, *optional*):
            Configuration of the vision tower. Its `image_size` is the size the pretrained position table was
            trained at (224 for ViT-B/16); the table is resized once to `image_size` below. Defaults to CLIP ViT-B/16.
        backbone_type (`str`, *optional*):
            `"clip"` (ln_post and the visual projection applied to every token) or `"vit"`. Inferred from
            `vision_config` when omitted.
        image_size (`tuple[int, int]`, *optional*, defaults to `(256, 128)`):
            Input (height, width) of every modality image.
        num_labels (`int`, *optional*, defaults to 171):
            Number of training identities (classifier outputs); RGBNT201's 171 when neither it nor `id2label` is given.
        num_cameras (`int`, *optional*, defaults to 0):
            Number of cameras for the Side Information Embedding (SIE); 0 disables it.
        sie_coefficient (`float`, *optional*, defaults to 1.0):
            Scale of the camera embedding added to the class token.
        use_pife / use_hdm / use_atmoe (`bool`, *optional*, default to `True`):
            The modules of paper Table 5. ATMoE needs HDM.
        atmoe_heads (`int`, *optional*, defaults to 4):
            Number of ATMoE gating heads; must divide the feature size.
        gating (`str`, *optional*, defaults to `"attention"`):
            `"attention"` (ATMoE), `"simple_add"` or `"simple_concat"` (paper Table 6).
        direct_classifier (`bool`, *optional*, defaults to `True`):
            One BN-neck + classifier on concat(f_R, f_N, f_T) instead of one per modality.
        hdm_dropout (`float`, *optional*, defaults to 0.1):
            Attention dropout of the HDM cross-attentions.
        inference_features (`str`, *optional*, defaults to `"all"`):
            Retrieval feature: `"ori"` = concat(f_R, f_N, f_T), `"moe"` = the ATMoE feature, `"all"` = both.
        head_init (`str`, *optional*, defaults to `"pytorch"`):
            Initialisation of the new head layers (PIFE, HDM attention, ATMoE gate and experts): `"pytorch"` =
            PyTorch's module defaults, as the authors' code leaves them; `"normal"` = normal(0, initializer_range)
            weights and zero biases, the usual HF init. The tower, HDM queries, BN-necks and classifiers are the same
            under both.
        id_loss_weight, triplet_loss_weight, label_smoothing, triplet_margin:
            Loss recipe read by the trainer; `triplet_margin=None` selects the soft-margin triplet loss.
    """

    model_type = "demo_reid"
    sub_configs = {"vision_config": AutoConfig}

    def __init__(
        self,
        vision_config=None,
        backbone_type=None,
        image_size=(256, 128),
        num_labels=None,
        num_cameras=0,
        sie_coefficient=1.0,
        use_pife=True,
        use_hdm=True,
        use_atmoe=True,
        atmoe_heads=4,
        gating="attention",
        direct_classifier=True,
        hdm_dropout=0.1,
        inference_features="all",
        head_init="pytorch",
        id_loss_weight=0.25,
        triplet_loss_weight=1.0,
        label_smoothing=0.1,
        triplet_margin=None,
        initializer_range=0.02,
        **kwargs,
    ):
        if vision_config is None:
            vision_config = CONFIG_MAPPING["clip_vision_model"](
                **VIT_B16_SHAPES, projection_dim=512, hidden_act="quick_gelu"
            )
        elif isinstance(vision_config, dict):
            model_type = vision_config.get("model_type", "clip_vision_model")
            if model_type == "clip":  # a full CLIP config: keep its vision half
                vision_config = vision_config.get("vision_config", {})
                model_type = "clip_vision_model"
            vision_config = CONFIG_MAPPING[model_type](**{k: v for k, v in vision_config.items() if k != "model_type"})
        self.vision_config = vision_config

        inferred = {v: k for k, v in BACKBONE_MODEL_TYPES.items()}.get(vision_config.model_type)
        if inferred is None:
            raise ValueError(
                f"vision_config must be a CLIP vision or ViT config, got model_type={vision_config.model_type!r}"
            )
        if backbone_type is None:
            backbone_type = inferred
        if backbone_type != inferred:
            raise ValueError(
                f"backbone_type={backbone_type!r} does not match vision_config.model_type="
                f"{vision_config.model_type!r} (expected backbone_type={inferred!r})"
            )
        self.backbone_type = backbone_type

        image_size = tuple(int(s) for s in image_size)
        patch = vision_config.patch_size
        if len(image_size) != 2 or any(s <= 0 or s % patch for s in image_size):
            raise ValueError(f"image_size must be (height, width), both multiples of patch_size={patch}; got {image_size}")
        self.image_size = image_size
        if gating not in GATING_TYPES:
            raise ValueError(f"gating must be one of {GATING_TYPES}, got {gating!r}")
        if inference_features not in INFERENCE_FEATURES:
            raise ValueError(f"inference_features must be one of {INFERENCE_FEATURES}, got {inference_features!r}")
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")
        if use_atmoe and not use_hdm:
            raise ValueError("use_atmoe=True needs use_hdm=True: the experts are the HDM's decoupled features")
        if num_cameras < 0:
            raise ValueError(f"num_cameras must be >= 0, got {num_cameras}")

        self.num_cameras = int(num_cameras)
        self.sie_coefficient = float(sie_coefficient)
        self.use_pife = bool(use_pife)
        self.use_hdm = bool(use_hdm)
        self.use_atmoe = bool(use_atmoe)
        self.atmoe_heads = int(atmoe_heads)
        self.gating = gating
        self.direct_classifier = bool(direct_classifier)
        self.hdm_dropout = float(hdm_dropout)
        self.inference_features = inference_features
        self.head_init = head_init
        self.id_loss_weight = float(id_loss_weight)
        self.triplet_loss_weight = float(triplet_loss_weight)
        self.label_smoothing = float(label_smoothing)
        self.triplet_margin = triplet_margin
        self.initializer_range = initializer_range
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        elif "id2label" not in kwargs:
            kwargs["num_labels"] = 171
        super().__init__(**kwargs)

        if self.use_atmoe and self.feature_dim % self.atmoe_heads:
            raise ValueError(f"atmoe_heads={self.atmoe_heads} must divide the feature size {self.feature_dim}")

    @property
    def feature_dim(self) -> int:
        """Size C of one modality's feature: the CLIP projection (512 for ViT-B/16) or the ViT width (768)."""
        if self.backbone_type == "clip":
            return self.vision_config.projection_dim
        return self.vision_config.hidden_size

    @property
    def patch_grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) of `image_size`."""
        patch = self.vision_config.patch_size
        return self.image_size[0] // patch, self.image_size[1] // patch


__all__ = ["DeMoConfig"]
