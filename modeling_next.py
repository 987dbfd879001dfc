"""NEXT (IEEE TIFS 2026, arXiv 2505.20001): multi-grained mixture of experts via text modulation, for RGB / NIR /
TIR object ReID.

The authors have not released code: this is our reading of the paper's framework figure (Fig. 3) and of the few
facts secondary sources report (a review of arXiv v3, readers' notes on arXiv v5). What the figure shows: one
learnable CLIP image tower for the three modalities; a frozen CLIP text tower of which only the sentence embedding
is used; Text-Modulated Semantic Experts (TMSE) that pick the top-k patches of each modality by "saliency alpha +
FC(act(FC([beta_rgb, beta_nir, beta_tir])))", beta being the cosine between an expert's caption embedding and the
patches; Context-Shared Structure Experts (CSSE) behind one soft router shared by the modalities; Multi-Grained
Feature Aggregation (MGFA), where the three class tokens cross-attend to each expert group, giving the final
feature that is supervised and ranked. Reported: per-modality sampling routers for alpha, experts of the form
Dropout(MLP(LN(F))) + F, the text encoder at inference. Everything else (the gradient path through the top-k, how
the expert tokens reach MGFA, Soft-MoE slots, the "no text" embedding, ...) is our choice, stated where it is made
and collected in docs/next.md; the earlier choices stay reachable as config switches.

The image tower, its SIE, the position-table resize, the BN-neck heads, the image input checks and the new-layer
init are those every ReID model here shares (`ReIDPreTrainedModel` in the family's modeling_reid.py, which
`save_pretrained` ships with every NEXT checkpoint).
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput
from transformers.models.clip.modeling_clip import CLIPTextModelWithProjection
from transformers.models.metaclip_2.modeling_metaclip_2 import MetaClip2TextModelWithProjection
from transformers.models.siglip.modeling_siglip import SiglipTextModel
from transformers.models.siglip2.modeling_siglip2 import Siglip2TextModel

try:
    from .configuration_next import NextConfig
    from .configuration_reid import MODALITIES, pretrained_normalization
    from .modeling_reid import (
        TOWER_LAYER_NAMES,
        TOWER_SHAPE_FIELDS,
        UNUSED_CLIP_TEXT_KEYS,
        UNUSED_SIGLIP_TEXT_KEYS,
        DUAL_MODEL_TYPES,
        QuickGELU,
        ReIDLinear,
        ReIDPreTrainedModel,
        check_tower_shapes,
        encode_text_with_prompts,
        is_tracing,
        quiet_about,
    )
except ImportError:  # imported as top-level modules from a checkout
    from configuration_next import NextConfig
    from configuration_reid import MODALITIES, pretrained_normalization
    from modeling_reid import (
        TOWER_LAYER_NAMES,
        TOWER_SHAPE_FIELDS,
        UNUSED_CLIP_TEXT_KEYS,
        UNUSED_SIGLIP_TEXT_KEYS,
        DUAL_MODEL_TYPES,
        QuickGELU,
        ReIDLinear,
        ReIDPreTrainedModel,
        check_tower_shapes,
        encode_text_with_prompts,
        is_tracing,
        quiet_about,
    )


# text_config.model_type -> (the transformers text tower NEXT runs, the keys of a dual checkpoint it leaves unused).
# CLIP-like towers give their projected end-of-text token (`text_embeds`); SigLIP's, its head's `pooler_output`.
TEXT_TOWERS = {
    "clip_text_model": (CLIPTextModelWithProjection, UNUSED_CLIP_TEXT_KEYS),
    "metaclip_2_text_model": (MetaClip2TextModelWithProjection, UNUSED_CLIP_TEXT_KEYS),
    "siglip_text_model": (SiglipTextModel, UNUSED_SIGLIP_TEXT_KEYS),
    "siglip2_text_model": (Siglip2TextModel, UNUSED_SIGLIP_TEXT_KEYS),
}


@dataclass
class NextModelOutput(ModelOutput):
    """
    Output of [`NextModel`]. C is `config.feature_dim`; all features are taken before the BN-necks.

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, D)`):
            The retrieval feature, `feature_sets[config.inference_features]`: by default `"final"`, the MGFA output
            (6C with both branches; the abstracts' "final identity representations"), or `"all"` = concat(class
            tokens, final) (9C; our earlier choice, after DeMo's "all" feature).
        logits (`dict[str, torch.FloatTensor]`):
            Identity logits (batch_size, num_labels) per supervised head, keyed as `features`.
        features (`dict[str, torch.FloatTensor]`):
            The supervised features (`config.head_names`), same keys in the same order as `logits`; ID + triplet
            loss apply to each. By default only `"final"` (the figure's one ID + triplet box); with
            `supervised_heads="all"` also `"cls"` (concat of the three class tokens, 3C), `"semantic"` (TMSE after
            MGFA, 3C) and `"structure"` (CSSE after MGFA, 3C), `"final"` then present only with both branches.
        feature_sets (`dict[str, torch.FloatTensor]`):
            Every named retrieval row evaluation reports: `"cls"`, `"semantic"` and `"structure"` (enabled branches
            only), `"final"` (the MGFA output of the enabled branches; the class tokens without any) and `"all"`
            (concat(cls, the enabled branches)).
        expert_weights (`torch.FloatTensor` of shape `(batch_size, 1, num_structure_experts)`, *optional*):
            Share of the 3n patch tokens each structure expert receives (Soft-MoE combine weights summed over its
            slots and averaged over tokens; sums to 1). `None` without CSSE.
        semantic_expert_features (`torch.FloatTensor` of shape `(batch_size, num_semantic_experts, C)`, *optional*):
            s_e, the semantic experts' outputs before MGFA.
        structure_expert_features (`torch.FloatTensor` of shape `(batch_size, num_structure_experts, C)`, *optional*):
            The structure experts' outputs before MGFA.
        selected_patches (`torch.LongTensor` of shape `(batch_size, num_semantic_experts, 3, k)`, *optional*):
            Row-major patch index (within the modality's grid) of the k patches each semantic expert took from
            each modality, highest score first.
    """

    embeddings: torch.FloatTensor | None = None
    logits: dict[str, torch.FloatTensor] | None = None
    features: dict[str, torch.FloatTensor] | None = None
    feature_sets: dict[str, torch.FloatTensor] | None = None
    expert_weights: torch.FloatTensor | None = None
    semantic_expert_features: torch.FloatTensor | None = None
    structure_expert_features: torch.FloatTensor | None = None
    selected_patches: torch.LongTensor | None = None


def attention_heads(dim: int) -> int:
    """Heads of every new attention layer: one per 64 channels (8 for C = 512), one head below that."""
    return dim // 64 if dim >= 64 and dim % 64 == 0 else 1


class NextExpertLinear(nn.Module):
    """One Linear layer per expert, all applied in one einsum: `(B, E, T, in)` -> `(B, E, T, out)`.

    Stacked weights `(E, out, in)` instead of E `nn.Linear` modules, so dozens of experts cost one kernel. Its own
    class so that `_init_weights` starts each expert's slice like a new PyTorch Linear (or per `head_init`).
    """

    def __init__(self, num_experts: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features = in_features
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_experts, out_features)) if bias else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("beti,eoi->beto", hidden_states, self.weight.to(hidden_states.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)[:, None, :]
        return out


class NextExpertMLP(nn.Module):
    """Per-expert FC -> QuickGELU -> FC (hidden width = output width; our choice)."""

    def __init__(self, num_experts: int, in_features: int, out_features: int):
        super().__init__()
        self.fc1 = NextExpertLinear(num_experts, in_features, out_features)
        self.act = QuickGELU()
        self.fc2 = NextExpertLinear(num_experts, out_features, out_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class NextTokenExperts(nn.Module):
    """`semantic_expert="token_mlp"` (reported form, a review of arXiv v3): E(F) = Dropout(MLP(LN(F))) + F applied
    to each of an expert's sampled tokens, then their selection-weighted mean (ours) is the expert's feature s_e.

    `(B, E, T, C)` tokens and `(B, E, T)` selection weights -> `(B, E, C)`. The weights multiply the expert's output
    tokens, after every normalisation: weighting the input tokens instead would leave the weight only in the
    residual, and a LayerNorm erases any per-token scale, with it the only gradient the selection scores (hence the
    text modulation) receive. One LayerNorm for all experts: its affine part folds into each expert's first FC.
    """

    def __init__(self, num_experts: int, dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = NextExpertMLP(num_experts, dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        expert_tokens = tokens + self.dropout(self.mlp(self.norm(tokens)))
        return (expert_tokens * weights.unsqueeze(-1)).mean(dim=2)


class NextExpertAttentionPool(nn.Module):
    """`semantic_expert="attention_pool"` (ours): a learned per-expert query attends to the expert's tokens, then a
    residual pre-norm MLP (Dropout on its output, as the token experts).

    `(B, E, T, C)` tokens and `(B, E, T)` selection weights -> `(B, E, C)`. Pre-norm layout, residual from the
    query, heads per `attention_heads`. The weights multiply the tokens after their LayerNorm (which would erase a
    per-token scale applied before it, and with it the selection scores' gradient).
    """

    def __init__(self, num_experts: int, dim: int, dropout: float):
        super().__init__()
        self.num_heads = attention_heads(dim)
        self.query = nn.Parameter(torch.zeros(num_experts, dim))
        self.token_norm = nn.LayerNorm(dim)
        self.q_proj = NextExpertLinear(num_experts, dim, dim)
        self.k_proj = NextExpertLinear(num_experts, dim, dim)
        self.v_proj = NextExpertLinear(num_experts, dim, dim)
        self.out_proj = NextExpertLinear(num_experts, dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = NextExpertMLP(num_experts, dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        batch, experts, length, dim = tokens.shape
        heads = self.num_heads
        query = self.query.to(tokens.dtype).view(1, experts, 1, dim)
        normed = self.token_norm(tokens) * weights.unsqueeze(-1)

        def split(x):  # (b, E, T, C) -> (b * E, heads, T, C / heads)
            return x.reshape(x.shape[0] * experts, x.shape[2], heads, dim // heads).transpose(1, 2)

        q = split(self.q_proj(query).expand(batch, -1, -1, -1))
        attended = F.scaled_dot_product_attention(q, split(self.k_proj(normed)), split(self.v_proj(normed)))
        attended = attended.transpose(1, 2).reshape(batch, experts, 1, dim)
        pooled = query + self.out_proj(attended)
        pooled = pooled + self.dropout(self.mlp(self.mlp_norm(pooled)))
        return pooled.squeeze(2)


class NextSamplingRouters(nn.Module):
    """`saliency="router"` (reported: a review of arXiv v3 names per-modality sampling paths R_rgb, R_nir, R_tir):
    alpha_m = softmax over modality m's patches of w_m . LN(F_m,i), one learned router per modality.

    `(B, 3, n, C)` -> `(B, 3, n)`. A LayerNorm without affine parameters and a bias-free Linear(C -> 1): the affine
    part would fold into the Linear, and a bias is a constant under the softmax over patches. One router per
    modality, shared by the experts (ours): the figure draws one sigma per class token, and the experts already
    differ by their own text modulation.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = NextExpertLinear(len(MODALITIES), dim, 1, bias=False)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(patch_tokens, patch_tokens.shape[-1:])
        return self.score(normed).squeeze(-1).softmax(dim=-1)


class NextSemanticExperts(nn.Module):
    """TMSE: N_s experts, each choosing 3k patches by saliency + its caption's relevance, reduced to s_e (C).

    For expert e and modality m (n patches F_m, class token R_m):
    - alpha_m, the saliency: a learned sampling router per modality (`NextSamplingRouters`, reported) or the class
      token's scaled dot-product attention over the patches (`saliency="cls_dot"`, ours);
    - beta_e,m,i = cos(t_e,m, F_m,i), t_e,m the expert's caption embedding of modality m, or its learned "no text"
      embedding (one per expert and modality; our choice) when there is no caption;
    - gamma_e = alpha + FC(QuickGELU(FC([beta_e,rgb, beta_e,nir, beta_e,tir]))) over the 3n concatenated positions,
      one modulation network per expert (our choice: experts given the same caption still look at different
      patches), FC widths 3n -> 3n -> 3n;
    - the top-k patches of each modality by gamma are weighted by k * softmax(gamma over those k) (our choice:
      weights average 1, and gamma, hence alpha and the modulation, get gradients through them);
    - the 3k tokens and their weights go through the expert (`NextTokenExperts` or `NextExpertAttentionPool`),
      which applies the weights after its normalisations.
    """

    def __init__(self, config: NextConfig):
        super().__init__()
        dim = config.feature_dim
        rows, cols = config.patch_grid
        self.num_experts = config.num_semantic_experts
        self.tokens_per_expert = config.tokens_per_expert
        self.num_patches = rows * cols
        self.no_text_embedding = nn.Parameter(torch.zeros(self.num_experts, len(MODALITIES), dim))
        self.modulation = NextExpertMLP(self.num_experts, len(MODALITIES) * self.num_patches, 3 * self.num_patches)
        self.routers = NextSamplingRouters(dim) if config.saliency == "router" else None
        expert_class = NextTokenExperts if config.semantic_expert == "token_mlp" else NextExpertAttentionPool
        self.experts = expert_class(self.num_experts, dim, config.semantic_expert_dropout)

    def saliency(self, cls_tokens: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        """alpha (B, 3, n): each modality's saliency over its patches, summing to 1."""
        if self.routers is not None:
            return self.routers(patch_tokens)
        dim = patch_tokens.shape[-1]
        return (torch.einsum("bmc,bmnc->bmn", cls_tokens, patch_tokens) * dim**-0.5).softmax(dim=-1)

    def forward(
        self,
        cls_tokens: torch.Tensor,
        patch_tokens: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        has_text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`cls_tokens` (B, 3, C), `patch_tokens` (B, 3, n, C), `text_embeds` (B, N_s or 1, 3, C) with `has_text`
        (B, N_s or 1, 3) -> (s (B, N_s, C), selected patch indices (B, N_s, 3, k))."""
        batch, modalities, patches, dim = patch_tokens.shape
        experts, k = self.num_experts, self.tokens_per_expert
        saliency = self.saliency(cls_tokens, patch_tokens)

        text = self.no_text_embedding.to(patch_tokens.dtype).expand(batch, -1, -1, -1)
        if text_embeds is not None:
            # torch.where keeps the no-text embedding in the graph even when every caption is present, so
            # distributed training sees no unused parameter.
            text = torch.where(has_text.unsqueeze(-1), text_embeds.to(text.dtype), text)
        relevance = torch.einsum("bemc,bmnc->bemn", F.normalize(text, dim=-1), F.normalize(patch_tokens, dim=-1))
        modulation = self.modulation(relevance.reshape(batch, experts, 1, modalities * patches))
        scores = saliency.unsqueeze(1) + modulation.view(batch, experts, modalities, patches)

        top_scores, top_index = scores.topk(k, dim=-1)  # (B, E, 3, k)
        weights = (k * top_scores.softmax(dim=-1)).reshape(batch, experts, modalities * k)
        offsets = (torch.arange(batch, device=top_index.device) * modalities).view(batch, 1, 1, 1)
        offsets = (offsets + torch.arange(modalities, device=top_index.device).view(1, 1, modalities, 1)) * patches
        selected = patch_tokens.reshape(-1, dim)[top_index + offsets]  # (B, E, 3, k, C)
        selected = selected.reshape(batch, experts, modalities * k, dim)
        return self.experts(selected, weights), top_index


class NextStructureExperts(nn.Module):
    """CSSE: all 3n patch tokens through one soft router shared by the modalities, into N_c expert MLPs.

    Soft-MoE routing (our reading of "modal-shared routing"): router logits = Linear(LayerNorm(x)) over
    N_c * slots_per_expert slots; each slot's input is a softmax-over-tokens (dispatch) average of the tokens; each
    expert is a residual pre-norm MLP over its slots; the combine weights are a softmax over slots per token.
    Expert c's structure feature is the combine-weighted average of its slot outputs (weights = how much all tokens
    draw on each slot), and its routing weight is the share of the tokens' combine mass its slots receive.
    No balance loss (none is shown; our choice).
    """

    def __init__(self, config: NextConfig):
        super().__init__()
        dim = config.feature_dim
        self.num_experts = config.num_structure_experts
        self.slots_per_expert = config.structure_slots_per_expert
        self.router_norm = nn.LayerNorm(dim)
        self.router = ReIDLinear(dim, self.num_experts * self.slots_per_expert, bias=False)
        self.expert_norm = nn.LayerNorm(dim)
        self.experts = NextExpertMLP(self.num_experts, dim, dim)

    def forward(self, patch_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`patch_tokens` (B, 3, n, C) -> (features (B, N_c, C), routing weights (B, N_c) summing to 1)."""
        tokens = patch_tokens.flatten(1, 2)  # (B, 3n, C)
        batch, length, dim = tokens.shape
        logits = self.router(self.router_norm(tokens))  # (B, 3n, slots)
        dispatch = logits.softmax(dim=1)
        slots = torch.einsum("bts,btc->bsc", dispatch, tokens)
        slots = slots.view(batch, self.num_experts, self.slots_per_expert, dim)
        outputs = slots + self.experts(self.expert_norm(slots))
        usage = logits.softmax(dim=2).sum(dim=1).view(batch, self.num_experts, self.slots_per_expert)
        features = (usage.unsqueeze(-1) * outputs).sum(dim=2) / usage.sum(dim=2, keepdim=True)
        return features, usage.sum(dim=2) / length


class NextModel(ReIDPreTrainedModel):
    """NEXT for multi-modal ReID: `pixel_values` (B, 3 modalities, 3, H, W) in the order RGB, NIR, TIR, and optional
    captions, one per modality (or one per semantic expert and modality).

    Parameters: `vision_tower.*` (trainable image tower, `ReIDVisionTower`), `text_tower.*` (frozen text tower, e.g.
    `CLIPTextModelWithProjection`; absent when the text is unused), `text_bridge.*` (with `config.text_bridge`),
    `semantic_experts.*` + `semantic_aggregation.*` (TMSE + its MGFA cross-attention), `structure_experts.*` +
    `structure_aggregation.*` (CSSE + its MGFA cross-attention), `bnnecks.<head>` / `classifiers.<head>`.
    """

    config_class = NextConfig
    config: NextConfig
    base_model_prefix = "next"
    input_modalities = ("image", "text")
    _no_split_modules = [*TOWER_LAYER_NAMES, "CLIPTextEmbeddings"]
    _frozen_modules = ("text_tower",)

    def __init__(self, config: NextConfig):
        super().__init__(config)
        dim = config.feature_dim
        if config.uses_text:
            self.text_tower = TEXT_TOWERS[config.text_config.model_type][0](config.text_config)
            if config.text_bridge:
                self.text_bridge = ReIDLinear(config.text_feature_dim, dim)
            if config.num_text_prompts:  # outside the frozen text tower: they train with the heads
                self.text_prompts = nn.Parameter(torch.zeros(config.num_text_prompts, config.text_config.hidden_size))
        heads = attention_heads(dim)
        if config.use_tmse:
            self.semantic_experts = NextSemanticExperts(config)
            self.semantic_aggregation = nn.MultiheadAttention(dim, heads, batch_first=True)
        if config.use_csse:
            self.structure_experts = NextStructureExperts(config)
            self.structure_aggregation = nn.MultiheadAttention(dim, heads, batch_first=True)
        final_dim = 3 * dim * max(1, len(config.branch_names))
        dims = {"cls": 3 * dim, "semantic": 3 * dim, "structure": 3 * dim, "final": final_dim}
        self.build_heads({name: dims[name] for name in config.head_names})
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """NEXT's own classes: `NextExpertLinear` per `config.head_init` (default: each expert's slice like a new
        PyTorch Linear, uniform(+-1/sqrt(fan_in)) weight and bias); the learned queries and "no text" embeddings
        normal(0, C^-0.5); the text prompt vectors normal(0, 1), as IDEA's authors leave theirs. Every other module
        as `ReIDPreTrainedModel` (the image tower, the CSSE router `ReIDLinear`, the MGFA `nn.MultiheadAttention`,
        the heads); the text tower initialises itself by CLIP's init (it is a `PreTrainedModel`), then
        `from_pretrained_towers` overwrites it."""
        if isinstance(module, NextModel) and module.config.num_text_prompts:
            init.normal_(module.text_prompts, std=1.0)
        elif isinstance(module, NextExpertLinear):
            if self.config.head_init == "pytorch":
                bound = module.in_features**-0.5
                init.uniform_(module.weight, -bound, bound)
                if module.bias is not None:
                    init.uniform_(module.bias, -bound, bound)
            else:
                init.normal_(module.weight, std=self.config.initializer_range)
                if module.bias is not None:
                    init.zeros_(module.bias)
        elif isinstance(module, NextExpertAttentionPool):
            init.normal_(module.query, std=module.query.shape[-1] ** -0.5)
        elif isinstance(module, NextSemanticExperts):
            init.normal_(module.no_text_embedding, std=module.no_text_embedding.shape[-1] ** -0.5)
        else:
            super()._init_weights(module)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sentence embeddings of the frozen text tower (projected end-of-text token, as CLIP; with
        `num_text_prompts`, IDEA's prompted pass, whose gradient reaches the prompt vectors), shape
        `input_ids.shape[:-1] + (C,)`. Every caption must be non-empty (carry its tokenizer's eos token)."""
        if not hasattr(self, "text_tower"):
            raise ValueError("this model has no text tower (use_text=False or use_tmse=False)")
        length = input_ids.shape[-1]
        flat_ids = input_ids.reshape(-1, length)
        flat_mask = attention_mask.reshape(-1, length) if attention_mask is not None else None
        if self.config.num_text_prompts:
            embeds = encode_text_with_prompts(self.text_tower, flat_ids, self.text_prompts, flat_mask)
        else:
            with torch.no_grad():
                embeds = self._frozen_text_features(flat_ids, flat_mask)
        return embeds.view(*input_ids.shape[:-1], -1)

    def _frozen_text_features(self, flat_ids: torch.Tensor, flat_mask: torch.Tensor | None) -> torch.Tensor:
        """The text tower's own sentence embedding (M, C) of captions (M, L): CLIP-like towers' projected
        end-of-text token, SigLIP's head output."""
        length = flat_ids.shape[-1]
        text = self.config.text_config
        if text.model_type.startswith("siglip"):
            # SigLIP was trained on captions padded to its full length and read without a mask, its sentence
            # embedding taken at the last position: pad the same way here, whatever the batch's padding.
            pad = text.pad_token_id if text.pad_token_id is not None else 0
            if flat_mask is not None:
                flat_ids = torch.where(flat_mask.bool(), flat_ids, pad)
            flat_ids = F.pad(flat_ids, (0, text.max_position_embeddings - length), value=pad)
            embeds = self.text_tower(input_ids=flat_ids).pooler_output
        else:
            embeds = self.text_tower(input_ids=flat_ids, attention_mask=flat_mask).text_embeds
        return embeds

    def _check_inputs(self, pixel_values, camera_ids, modality_mask, input_ids=None, attention_mask=None):
        """The image checks of every ReID model, then the captions', each error naming the argument and what was
        expected."""
        super()._check_inputs(pixel_values, camera_ids, modality_mask)
        if not self._check_caption_tensors(input_ids, attention_mask):
            return
        batch, experts = pixel_values.shape[0], self.config.num_semantic_experts
        if input_ids.dim() == 3:
            valid = input_ids.shape[:2] == (batch, 3)
        elif input_ids.dim() == 4:
            valid = input_ids.shape[:3] == (batch, experts, 3)
        else:
            valid = False
        if not valid or input_ids.shape[-1] == 0:
            raise ValueError(
                f"input_ids must have shape ({batch}, 3, length) (one caption per modality: RGB, NIR, TIR) or "
                f"({batch}, {experts}, 3, length) (one per semantic expert and modality), got {tuple(input_ids.shape)}"
            )
        text = self.config.text_config if self.config.uses_text else None  # unused captions: only the mask's shape
        self._check_caption_length(input_ids, attention_mask, text)
        if text is None:
            return
        if is_tracing():
            return  # the checks below read token values, which a traced graph (torch.compile, torch.export) cannot branch on
        used = input_ids if attention_mask is None else input_ids[attention_mask.bool().any(-1)]
        used = used.reshape(-1, input_ids.shape[-1])
        if used.numel() and bool(((used < 0) | (used >= text.vocab_size)).any()):
            raise ValueError(
                f"input_ids must be token ids in [0, {text.vocab_size}) (text_config.vocab_size); got values up to "
                f"{used.max().item()}: tokenize with the tokenizer saved with this model"
            )
        clip_like = not text.model_type.startswith("siglip")  # SigLIP reads the last position, not the eos token
        if clip_like and text.eos_token_id is not None and text.eos_token_id != 2 and used.numel():
            # HF's CLIP text model pools the first eos token (legacy eos_token_id=2 configs pool the highest id).
            if not bool((used == text.eos_token_id).any(-1).all()):
                raise ValueError(
                    f"every non-empty caption in input_ids must contain eos_token_id={text.eos_token_id} (the sentence "
                    "embedding is read there); tokenize with the model's tokenizer, and give empty captions an "
                    "all-zero attention_mask"
                )

    def _caption_embeddings(self, input_ids, attention_mask, modality_mask):
        """Text embeddings (B, N_s or 1, 3, C) and which of them are real captions (B, N_s or 1, 3), or (None, None).

        A caption is absent when its attention mask is all zero or its modality is masked out; absent captions are
        not run through the text tower (the semantic experts use their "no text" embedding for them)."""
        if input_ids is None or not self.config.uses_text:
            return None, None
        if input_ids.dim() == 3:  # one caption per modality, shared by every expert
            input_ids = input_ids.unsqueeze(1)
            attention_mask = attention_mask.unsqueeze(1) if attention_mask is not None else None
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        has_text = attention_mask.bool().any(dim=-1)
        if modality_mask is not None:
            has_text = has_text & modality_mask.bool()[:, None, :]
        if is_tracing():
            # A traced graph cannot pick the present captions out (data-dependent shape): embed every caption and
            # zero the absent ones, which is what the eager path below leaves in them.
            embeds = self.get_text_features(input_ids, attention_mask).to(self.dtype)
            return self._bridge(torch.where(has_text.unsqueeze(-1), embeds, 0)), has_text
        embeds = torch.zeros(*has_text.shape, self.config.text_feature_dim, device=input_ids.device, dtype=self.dtype)
        if bool(has_text.any()):
            embeds[has_text] = self.get_text_features(input_ids[has_text], attention_mask[has_text]).to(embeds.dtype)
        return self._bridge(embeds), has_text

    def _bridge(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """Caption embeddings in the image feature space: through `text_bridge` (trainable) when the text tower is
        not the image tower's own (`config.text_bridge`), else as they are. Absent captions are replaced by the
        experts' "no text" embedding downstream, whatever this gives them."""
        return self.text_bridge(text_embeds) if self.config.text_bridge else text_embeds

    def forward(
        self,
        pixel_values: torch.Tensor,
        camera_ids: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
    ) -> NextModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, 3, height, width)`):
                Normalized RGB, NIR and TIR images of each triple (`config.image_mean` / `image_std`; 0.5 / 0.5 for CLIP).
            camera_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                0-based camera of each triple, for the Side Information Embedding.
            input_ids (`torch.LongTensor` of shape `(batch_size, 3, L)` or `(batch_size, N_s, 3, L)`, *optional*):
                Captions tokenized with the model's tokenizer: one per modality (RGB, NIR, TIR) read by every semantic
                expert (evaluation: the whole caption), or one per semantic expert and modality (training: each
                expert's own sentence subset). Ignored with `use_text=False` or without TMSE.
            attention_mask (same shape as `input_ids`, *optional*):
                1 for tokens, 0 for padding. An all-zero row is a missing caption: that expert / modality uses its
                learned "no text" embedding, as do all of them when `input_ids` is None.
            modality_mask (`torch.BoolTensor` of shape `(batch_size, 3)`, *optional*):
                False marks a missing modality: its normalized pixels are replaced by zeros and its caption dropped.
        """
        self._check_inputs(pixel_values, camera_ids, modality_mask, input_ids, attention_mask)
        cls_tokens, patch_tokens = self.encode_images(pixel_values, camera_ids, modality_mask)

        rows = {"cls": cls_tokens.flatten(1)}
        semantic = structure = expert_weights = selected = None
        if self.config.use_tmse:
            text_embeds, has_text = self._caption_embeddings(input_ids, attention_mask, modality_mask)
            semantic, selected = self.semantic_experts(cls_tokens, patch_tokens, text_embeds, has_text)
            # MGFA: the three class tokens query the semantic experts.
            aggregated, _ = self.semantic_aggregation(cls_tokens, semantic, semantic, need_weights=False)
            rows["semantic"] = aggregated.flatten(1)
        if self.config.use_csse:
            structure, routing = self.structure_experts(patch_tokens)
            aggregated, _ = self.structure_aggregation(cls_tokens, structure, structure, need_weights=False)
            rows["structure"] = aggregated.flatten(1)
            expert_weights = routing.unsqueeze(1)
        branches = [rows[name] for name in self.config.branch_names]
        # The MGFA output; without any expert branch (the baseline ablation) the class tokens stand in for it.
        rows["final"] = torch.cat(branches, dim=-1) if branches else rows["cls"]
        rows["all"] = torch.cat([rows["cls"], *branches], dim=-1)
        features = {name: rows[name] for name in self.config.head_names}
        logits = self.head_logits(features)
        embeddings = rows[self.config.inference_features]
        return NextModelOutput(
            embeddings=embeddings,
            logits=logits,
            features=features,
            feature_sets=rows,
            expert_weights=expert_weights,
            semantic_expert_features=semantic,
            structure_expert_features=structure,
            selected_patches=selected,
        )

    @classmethod
    def from_pretrained_towers(
        cls,
        pretrained_model_name_or_path,
        config: NextConfig | None = None,
        text_pretrained_model_name_or_path=None,
        **config_kwargs,
    ) -> "NextModel":
        """A new NEXT around pretrained towers (Hub ids or directories); the rest is random.

        The image tower as `ReIDPreTrainedModel.from_pretrained_towers` loads it (any family; position table resized
        once to `config.image_size`); the text tower, copied as is and frozen, from
        `text_pretrained_model_name_or_path` (a CLIP-like or SigLIP checkpoint, dual or text-only; the model then
        has `text_bridge`) or else from the image checkpoint's own text half (a dual checkpoint: `CLIPModel`, as in
        the paper). Without `config`, one is built around the checkpoints' configs (`NextConfig.from_backbone_config`)
        and `config_kwargs` (the image tower's `image_mean` / `image_std` unless set). Save the text checkpoint's
        tokenizer beside the model (`AutoTokenizer.from_pretrained(path).save_pretrained(output_dir)`).
        """
        from transformers import AutoConfig

        path = pretrained_model_name_or_path
        source_config = AutoConfig.from_pretrained(path)
        text_path = text_pretrained_model_name_or_path
        text_source_config = AutoConfig.from_pretrained(text_path) if text_path is not None else None
        if config is None:
            for key, value in pretrained_normalization(path, source_config.model_type).items():
                config_kwargs.setdefault(key, value)  # the image tower's own pixel statistics (CLIP: the authors')
            config = cls.config_class.from_backbone_config(source_config, text_source_config, **config_kwargs)
        if text_path is None:
            text_path, text_source_config = path, source_config
        model = super().from_pretrained_towers(path, config=config)
        if not hasattr(model, "text_tower"):
            return model
        if text_source_config.model_type in DUAL_MODEL_TYPES:
            text = text_source_config.text_config
        elif text_source_config.model_type in TEXT_TOWERS:
            text = text_source_config
        else:
            raise ValueError(
                f"{text_path} is a {text_source_config.model_type!r} checkpoint without a text tower; NEXT reads the "
                "captions with one: it needs a full CLIPModel checkpoint (image and text towers), or a CLIP or SigLIP "
                "text tower as text_pretrained_model_name_or_path (train.py --text-backbone)"
            )
        shapes = {field: getattr(text, field) for field in (*TOWER_SHAPE_FIELDS, "vocab_size", "max_position_embeddings")}
        check_tower_shapes("text_config", config.text_config, shapes, text_path)
        text_class, unused = TEXT_TOWERS[config.text_config.model_type]
        kwargs = {}
        if hasattr(text_source_config, "projection_dim") and text_source_config.model_type in DUAL_MODEL_TYPES:
            # A full CLIP-like checkpoint projects with the parent's projection_dim, whatever its halves say.
            check_tower_shapes("text_config", config.text_config,
                               {"projection_dim": text_source_config.projection_dim}, text_path)
            kwargs["projection_dim"] = text_source_config.projection_dim
        source = quiet_about(text_class, unused).from_pretrained(text_path, **kwargs)
        missing, unexpected = model.text_tower.load_state_dict(source.state_dict(), strict=False)
        if unexpected or [k for k in missing if not k.endswith("position_ids")]:
            raise ValueError(f"text tower weights do not fit: missing {missing}, unexpected {unexpected}")
        return model


NextConfig.register_for_auto_class()
NextModel.register_for_auto_class("AutoModel")

__all__ = ["NextModel", "NextModelOutput"]
