"""Configuration of DeMo (Decoupled Feature-Based Mixture of Experts, AAAI 2025) for multi-modal object ReID, on the
family's `ReIDConfig` (configuration_reid.py)."""

try:
    from .configuration_reid import ReIDConfig, check_choice, positive_int
except ImportError:  # imported as a top-level module from a checkout
    from configuration_reid import ReIDConfig, check_choice, positive_int

GATING_TYPES = ("attention", "simple_add", "simple_concat")
INFERENCE_FEATURES = ("all", "ori", "moe")


class DeMoConfig(ReIDConfig):
    r"""
    Configuration of a [`DeMoModel`]: the image tower shared by the RGB, NIR and TIR images of a triple, followed by
    the Patch-Integrated Feature Extractor (PIFE), the Hierarchical Decoupling Module (HDM) and the
    Attention-Triggered Mixture of Experts (ATMoE). The tower and head options are [`ReIDConfig`]'s, among them
    the retrieval feature `inference_features`: `"all"` (default) = concat(f_R, f_N, f_T, the HDM / ATMoE feature),
    `"ori"` = concat(f_R, f_N, f_T), `"moe"` = the HDM / ATMoE feature. DeMo's own:

    Args:
        use_pife (`bool`, *optional*, defaults to `True`):
            Fuse each modality's class token with its mean patch token (PIFE, paper eq. 2); without it the class
            tokens are the modality features (paper Table 5, model A).
        use_hdm (`bool`, *optional*, defaults to `True`):
            Decouple the three modalities into 7 combination features (R, N, T, RN, RT, NT, RNT) with learned queries
            (HDM, eq. 3-8), supervised as a second feature `"moe"`.
        use_atmoe (`bool`, *optional*, defaults to `True`):
            Weight the 7 decoupled features by attention-gated experts (ATMoE, eq. 9-15); needs `use_hdm`.
        atmoe_heads (`int`, *optional*, defaults to `4`):
            ATMoE gating heads, each with its own 7 experts on its chunk of the feature; must divide the feature size.
        gating (`str`, *optional*, defaults to `"attention"`):
            How ATMoE weights its experts: `"attention"` (the paper's), or the Table 6 baselines `"simple_add"` (a
            weighted sum, C wide) and `"simple_concat"` (weighted features concatenated).
        direct_classifier (`bool`, *optional*, defaults to `True`):
            One BN-neck + classifier on concat(f_R, f_N, f_T), as the authors train; False gives one per modality.
        hdm_dropout (`float`, *optional*, defaults to `0.1`):
            Attention dropout of the HDM cross-attentions, the authors' value.

    """

    model_type = "demo_reid"
    inference_feature_choices = INFERENCE_FEATURES

    def __init__(
        self,
        *,
        use_pife: bool = True,
        use_hdm: bool = True,
        use_atmoe: bool = True,
        atmoe_heads: int = 4,
        gating: str = "attention",
        direct_classifier: bool = True,
        hdm_dropout: float = 0.1,
        **kwargs,
    ):
        check_choice("gating", gating, GATING_TYPES)
        if use_atmoe and not use_hdm:
            raise ValueError("use_atmoe=True needs use_hdm=True: the experts are the HDM's decoupled features")
        if not 0.0 <= hdm_dropout <= 1.0:
            raise ValueError(f"hdm_dropout must be a probability in [0, 1], got {hdm_dropout}")
        self.use_pife = bool(use_pife)
        self.use_hdm = bool(use_hdm)
        self.use_atmoe = bool(use_atmoe)
        self.atmoe_heads = positive_int("atmoe_heads", atmoe_heads)
        self.gating = gating
        self.direct_classifier = bool(direct_classifier)
        self.hdm_dropout = float(hdm_dropout)
        super().__init__(**kwargs)

        if self.use_atmoe and self.feature_dim % self.atmoe_heads:
            raise ValueError(f"atmoe_heads={self.atmoe_heads} must divide the feature size {self.feature_dim}")


__all__ = ["DeMoConfig"]
