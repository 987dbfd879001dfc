"""IDEA (CVPR 2025): inverted text with cooperative deformable aggregation, for RGB / NIR / TIR object ReID.

What the authors' code (924973292/IDEA) computes, per triple: each modality's caption runs through a frozen CLIP text
tower, with learnable prompt vectors added to the token embeddings at positions 5, 6, ...; the caption's global
feature (the mean of the end-of-text token's and the prompt tokens' projected outputs) goes through the InverseNet, an
MLP whose output is appended to that modality's image tokens as one extra token (IMFE). One pass of the CLIP image
tower then gives the modality's visual global feature (class token), its "textual" global feature (the extra token)
and its patch tokens. Cooperative Deformable Aggregation (CDA) samples points from the three patch maps at offsets
predicted from all three and shared by them, and the six global features attend to the samples, giving a visual and
a textual aggregate. At test time every feature is returned; the authors report the textual aggregate (LOCAL_t).

The image tower, its SIE, the BN-neck heads, the image input checks and the new-layer init are those every ReID model
here shares (`ReIDPreTrainedModel` in the family's modeling_reid.py, shipped with every IDEA checkpoint).
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput
from transformers.models.clip.modeling_clip import CLIPTextModelWithProjection

try:
    from .configuration_idea import IdeaConfig
    from .configuration_reid import MODALITIES
    from .modeling_reid import (
        TOWER_SHAPE_FIELDS,
        UNUSED_CLIP_TEXT_KEYS,
        ReIDLinear,
        ReIDPreTrainedModel,
        check_tower_shapes,
        encode_text_with_prompts,
        init_new_linear,
        is_tracing,
        quiet_about,
    )
except ImportError:  # imported as top-level modules from a checkout
    from configuration_idea import IdeaConfig
    from configuration_reid import MODALITIES
    from modeling_reid import (
        TOWER_SHAPE_FIELDS,
        UNUSED_CLIP_TEXT_KEYS,
        ReIDLinear,
        ReIDPreTrainedModel,
        check_tower_shapes,
        encode_text_with_prompts,
        init_new_linear,
        is_tracing,
        quiet_about,
    )


@dataclass
class IdeaModelOutput(ModelOutput):
    """
    Output of [`IdeaModel`]. C is `config.feature_dim`; all features are taken before the BN-necks.

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, D)`):
            The retrieval feature, `feature_sets[config.inference_features]` (default `"LOCAL_t"`, 3C).
        logits (`dict[str, torch.FloatTensor]`):
            Identity logits (batch_size, num_labels) per supervised head, keyed as `features`.
        features (`dict[str, torch.FloatTensor]`):
            The supervised features (`config.head_names`): `"V"` / `"T"` (concatenated visual / textual global
            features, 3C) or, with per-modality heads, `"V_RGB"` ... `"T_TIR"` (C each); then `"LOCAL_v"` and
            `"LOCAL_t"` (the CDA aggregates, 3C) when CDA is on. ID + triplet loss apply to each.
        feature_sets (`dict[str, torch.FloatTensor]`):
            The authors' test-time features: `"V_RGB"`, `"V_NIR"`, `"V_TIR"` (class tokens), `"T_RGB"`, `"T_NIR"`,
            `"T_TIR"` (textual global features), `"LOCAL_v"` and `"LOCAL_t"` (the CDA aggregates, or the
            concatenated global features without CDA) and `"LOCAL"` = concat(LOCAL_v, LOCAL_t).
    """

    embeddings: torch.FloatTensor | None = None
    logits: dict[str, torch.FloatTensor] | None = None
    features: dict[str, torch.FloatTensor] | None = None
    feature_sets: dict[str, torch.FloatTensor] | None = None


class IdeaInverseNet(nn.Module):
    """The InverseNet of IMFE: Linear(C -> 4C) -> GELU -> Dropout -> Linear(4C -> tower width) -> Dropout maps a
    caption's global feature to one token of the image sequence, to which its own learned position vector is added
    (and, by the model, the camera's SIE vector)."""

    def __init__(self, config: IdeaConfig):
        super().__init__()
        dim, width = config.feature_dim, config.vision_config.hidden_size
        self.fc1 = ReIDLinear(dim, 4 * dim)
        self.fc2 = ReIDLinear(4 * dim, width)
        self.dropout = nn.Dropout(config.inverse_dropout)
        self.position_embedding = nn.Parameter(torch.zeros(width))

    def forward(self, text_global: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(F.gelu(self.fc1(text_global)))
        return self.dropout(self.fc2(hidden)) + self.position_embedding.to(text_global.dtype)


class IdeaDeformableAggregation(nn.Module):
    """CDA: queries (B, Q, C) attend to points sampled from the three patch maps (B, 3, n, C) -> (B, Q, C).

    The offsets come from one small network over the three maps stacked on the channel axis (1x1 conv 3C -> C, GELU,
    depthwise k x k conv with stride s, GELU, 1x1 conv C -> 2), bounded by tanh times `cda_offset_factor` grid cells
    (one cell = 1 / (points - 1) of the normalised range), added to reference points at the centres of the conv's
    windows, and shared by the three modalities. Each map is sampled bilinearly at the same points; the queries attend
    (one head, scale C^-1/2) to all 3 x points samples, and the attended value, after an output projection, is added to
    the query.
    """

    def __init__(self, config: IdeaConfig):
        super().__init__()
        dim = config.feature_dim
        kernel, stride = config.cda_kernel_size, config.cda_stride
        self.grid = config.patch_grid
        self.samples = config.cda_samples
        self.offset_factor = config.cda_offset_factor
        self.offset_net = nn.Sequential(
            nn.Conv2d(len(MODALITIES) * dim, dim, 1),
            nn.GELU(),
            nn.Conv2d(dim, dim, kernel, stride, groups=dim),
            nn.GELU(),
            nn.Conv2d(dim, 2, 1, bias=False),
        )
        self.q_proj = ReIDLinear(dim, dim)
        self.k_proj = ReIDLinear(dim, dim)
        self.v_proj = ReIDLinear(dim, dim)
        self.out_proj = ReIDLinear(dim, dim)
        self.kernel_size, self.stride = kernel, stride

    def reference_points(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(rows, cols, 2) window centres as (y, x) in [-1, 1] of the patch grid (align_corners convention). Computed
        per call, not a buffer: a non-persistent buffer is not restored by `from_pretrained`."""
        axes = []
        for size, count in zip(self.grid, self.samples):
            centres = torch.arange(count, device=device, dtype=torch.float32) * self.stride + self.kernel_size // 2
            axes.append(centres / (size - 1.0) * 2.0 - 1.0)
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).to(dtype)

    def sampling_points(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, 3, C, H, W) patch maps -> (B, rows, cols, 2) sampling points (y, x) in [-1, 1], shared by the maps."""
        batch = maps.shape[0]
        offsets = self.offset_net(maps.flatten(1, 2))
        if self.offset_factor > 0:
            rows, cols = self.samples
            cell = torch.tensor([1.0 / (rows - 1.0), 1.0 / (cols - 1.0)], device=maps.device, dtype=offsets.dtype)
            offsets = offsets.tanh() * cell.view(1, 2, 1, 1) * self.offset_factor
        points = offsets.permute(0, 2, 3, 1) + self.reference_points(offsets.device, offsets.dtype)
        return points.clamp(-1.0, 1.0).reshape(batch, *self.samples, 2)

    def forward(self, patch_tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        batch, modalities, _, dim = patch_tokens.shape
        maps = patch_tokens.transpose(-1, -2).reshape(batch, modalities, dim, *self.grid)
        points = self.sampling_points(maps)
        grid = points.flip(-1).repeat_interleave(modalities, dim=0)  # grid_sample reads (x, y)
        sampled = F.grid_sample(maps.flatten(0, 1), grid, mode="bilinear", align_corners=True)
        sampled = sampled.flatten(2).reshape(batch, modalities, dim, -1).permute(0, 1, 3, 2).flatten(1, 2)
        scores = self.q_proj(queries) @ self.k_proj(sampled).transpose(1, 2) * dim**-0.5
        attended = scores.softmax(dim=-1) @ self.v_proj(sampled)
        return queries + self.out_proj(attended)


class IdeaModel(ReIDPreTrainedModel):
    """
    IDEA (Wang, Lv, Zhang, Lu, CVPR 2025), as its authors' code computes it (docs/idea.md states where each part
    comes from): CLIP image tower with the InverseNet token, frozen CLIP text tower with learnable prompt vectors,
    CDA, and BN-neck heads on the concatenated (or per-modality) global features and on the two aggregates.

    Parameters: `vision_tower.*` (the family's image tower), `text_tower.*` (a `CLIPTextModelWithProjection`, frozen),
    `text_prompts` (the learnable prompt vectors), `inverse_net.*`, `aggregation.*` (CDA), `bnnecks.<head>` /
    `classifiers.<head>`.
    """

    config_class = IdeaConfig
    config: IdeaConfig
    base_model_prefix = "idea"
    input_modalities = ("image", "text")
    _no_split_modules = ["CLIPEncoderLayer", "CLIPTextEmbeddings"]
    _frozen_modules = ("text_tower",)

    def __init__(self, config: IdeaConfig):
        super().__init__(config)
        config.text_config._attn_implementation = config.vision_config._attn_implementation
        self.text_tower = CLIPTextModelWithProjection(config.text_config)
        if config.num_text_prompts:
            self.text_prompts = nn.Parameter(torch.zeros(config.num_text_prompts, config.text_config.hidden_size))
        if config.use_inverse:
            self.inverse_net = IdeaInverseNet(config)
        if config.use_cda:
            self.aggregation = IdeaDeformableAggregation(config)
        dim = config.feature_dim
        self.build_heads({name: dim if "_" in name and not name.startswith("LOCAL") else 3 * dim
                          for name in config.head_names})
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """As the authors' code leaves them: prompt vectors normal(0, 1), the extra token's position vector
        normal(0, width^-1/2), CDA's convolutions PyTorch's defaults (`head_init="normal"`: normal(initializer_range)
        and zero biases); everything else as `ReIDPreTrainedModel` (InverseNet and CDA projections are
        `ReIDLinear`)."""
        if isinstance(module, IdeaModel) and module.config.num_text_prompts:
            init.normal_(module.text_prompts, std=1.0)
        elif isinstance(module, IdeaInverseNet):
            init.normal_(module.position_embedding, std=module.position_embedding.shape[0] ** -0.5)
        elif isinstance(module, IdeaDeformableAggregation):
            for conv in module.offset_net:
                if isinstance(conv, nn.Conv2d):
                    if self.config.head_init == "pytorch":
                        conv.reset_parameters()
                    else:
                        init.normal_(conv.weight, std=self.config.initializer_range)
                        if conv.bias is not None:
                            init.zeros_(conv.bias)
        elif isinstance(module, ReIDLinear):
            init_new_linear(module, self.config.head_init == "pytorch", self.config.initializer_range)
        else:
            super()._init_weights(module)

    def text_global_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Global feature (M, C) of captions `input_ids` (M, L): the frozen text tower with the prompt vectors added
        at positions 5, 6, ..., pooled as the authors do (the family's `encode_text_with_prompts`, which NEXT's
        `num_text_prompts` shares). No attention mask, as in the authors' code: causal attention only."""
        prompts = self.text_prompts if self.config.num_text_prompts else None
        return encode_text_with_prompts(self.text_tower, input_ids, prompts)

    def _check_inputs(self, pixel_values, camera_ids, modality_mask, input_ids=None, attention_mask=None):
        """The image checks of every ReID model, then the captions', each error naming the argument and what was
        expected."""
        super()._check_inputs(pixel_values, camera_ids, modality_mask)
        if not self._check_caption_tensors(input_ids, attention_mask):
            return
        batch, text = pixel_values.shape[0], self.config.text_config
        if input_ids.dim() != 3 or input_ids.shape[:2] != (batch, 3) or input_ids.shape[-1] == 0:
            raise ValueError(
                f"input_ids must have shape ({batch}, 3, length) (one caption per modality: RGB, NIR, TIR), got "
                f"{tuple(input_ids.shape)}"
            )
        self._check_caption_length(input_ids, attention_mask, text)
        if is_tracing():
            return
        if bool(((input_ids < 0) | (input_ids >= text.vocab_size)).any()):
            raise ValueError(
                f"input_ids must be token ids in [0, {text.vocab_size}) (text_config.vocab_size); got values up to "
                f"{input_ids.max().item()}: tokenize with the tokenizer saved with this model"
            )

    def forward(
        self,
        pixel_values: torch.Tensor,
        camera_ids: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
    ) -> IdeaModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, 3, height, width)`):
                Normalized RGB, NIR and TIR images of each triple (mean = std = 0.5).
            camera_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                0-based camera of each triple, for the Side Information Embedding (added to the class token and to
                the InverseNet token).
            input_ids (`torch.LongTensor` of shape `(batch_size, 3, L)`, *optional*):
                Each modality's caption (RGB, NIR, TIR) tokenized with the model's tokenizer, with the authors'
                modality prefix (processing_reid.py adds it). None: no text at all; the textual global features are
                then the class tokens (as the authors' text-free variant `IDEA_woText` has them) and no token is
                appended.
            attention_mask (same shape as `input_ids`, *optional*):
                Accepted for the processor's sake and not needed: the text tower attends causally, so padding after
                the end-of-text token changes nothing (as in the authors' code, which passes no mask).
            modality_mask (`torch.BoolTensor` of shape `(batch_size, 3)`, *optional*):
                False marks a missing modality: its normalized pixels are replaced by zeros (the authors' `TEST.MISS`);
                its caption is still read.
        """
        self._check_inputs(pixel_values, camera_ids, modality_mask, input_ids, attention_mask)
        batch = pixel_values.shape[0]
        if modality_mask is not None:
            pixel_values = pixel_values * modality_mask.to(pixel_values.dtype)[:, :, None, None, None]
        tower_cameras = camera_ids.repeat_interleave(3) if camera_ids is not None else None

        extra = text_global = None
        if input_ids is not None:
            text_global = self.text_global_features(input_ids.flatten(0, 1)).to(self.dtype)
            if self.config.use_inverse:
                extra = self.inverse_net(text_global)
                embeddings = self.vision_tower.embeddings
                if tower_cameras is not None and embeddings.camera_embedding is not None:
                    camera = embeddings.camera_embedding[tower_cameras].to(extra.dtype)
                    extra = extra + embeddings.sie_coefficient * camera
                extra = extra.unsqueeze(1)
        tokens = self.vision_tower(pixel_values.flatten(0, 1), tower_cameras, extra_tokens=extra)
        visual = tokens[:, 0]
        if extra is not None:
            textual, patches = tokens[:, -1], tokens[:, 1:-1]
        else:
            textual = text_global if text_global is not None else visual
            patches = tokens[:, 1:]
        visual, textual = visual.view(batch, 3, -1), textual.view(batch, 3, -1).to(visual.dtype)
        patches = patches.reshape(batch, 3, patches.shape[1], -1)

        rows = {}
        for index, modality in enumerate(MODALITIES):
            rows[f"V_{modality.upper()}"] = visual[:, index]
        for index, modality in enumerate(MODALITIES):
            rows[f"T_{modality.upper()}"] = textual[:, index]
        rows["V"], rows["T"] = visual.flatten(1), textual.flatten(1)
        if self.config.use_cda:
            aggregated = self.aggregation(patches, torch.cat([visual, textual], dim=1))
            rows["LOCAL_v"], rows["LOCAL_t"] = aggregated[:, :3].flatten(1), aggregated[:, 3:].flatten(1)
        else:
            rows["LOCAL_v"], rows["LOCAL_t"] = rows["V"], rows["T"]
        rows["LOCAL"] = torch.cat([rows["LOCAL_v"], rows["LOCAL_t"]], dim=-1)
        features = {name: rows[name] for name in self.config.head_names}
        logits = self.head_logits(features)
        feature_sets = {name: rows[name] for name in self.config.inference_feature_choices}
        return IdeaModelOutput(
            embeddings=rows[self.config.inference_features], logits=logits, features=features, feature_sets=feature_sets
        )

    @classmethod
    def from_pretrained_towers(
        cls, pretrained_model_name_or_path, config: IdeaConfig | None = None, **config_kwargs
    ) -> "IdeaModel":
        """A new IDEA around both towers of one `CLIPModel` checkpoint (hub id or directory); the rest is random.

        The image tower as `ReIDPreTrainedModel.from_pretrained_towers` loads it; the text tower copied as is, and
        frozen. Save the checkpoint's tokenizer beside the model."""
        from transformers import AutoConfig

        path = pretrained_model_name_or_path
        source_config = AutoConfig.from_pretrained(path)
        if source_config.model_type != "clip":
            raise ValueError(
                f"{path} is a {source_config.model_type!r} checkpoint; IDEA needs a full CLIPModel checkpoint "
                "(image and text towers)"
            )
        if config is None:
            config = cls.config_class.from_backbone_config(source_config, **config_kwargs)
        text = source_config.text_config
        fields = (*TOWER_SHAPE_FIELDS, "vocab_size", "max_position_embeddings")
        shapes = {field: getattr(text, field) for field in fields}
        check_tower_shapes("text_config", config.text_config, shapes, path)
        for key in ("vision_config", "text_config"):
            check_tower_shapes(key, getattr(config, key), {"projection_dim": source_config.projection_dim}, path)
        model = super().from_pretrained_towers(path, config=config)
        text_class = quiet_about(CLIPTextModelWithProjection, UNUSED_CLIP_TEXT_KEYS)
        source = text_class.from_pretrained(path, projection_dim=source_config.projection_dim)
        missing, unexpected = model.text_tower.load_state_dict(source.state_dict(), strict=False)
        if unexpected or [k for k in missing if not k.endswith("position_ids")]:
            raise ValueError(f"text tower weights do not fit: missing {missing}, unexpected {unexpected}")
        return model


IdeaConfig.register_for_auto_class()
IdeaModel.register_for_auto_class("AutoModel")

__all__ = ["IdeaModel", "IdeaModelOutput", "IdeaInverseNet", "IdeaDeformableAggregation"]
