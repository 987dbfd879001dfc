"""DeMo (AAAI 2025): decoupled feature-based mixture of experts for multi-modal (RGB / NIR / TIR) object ReID.

One vision tower (CLIP in the paper; any family of the tower registry, docs/towers.md) encodes the three images of
a triple. PIFE fuses each modality's class token with its pooled patches, HDM decouples the three modalities into 7 features (R, N, T, RN, RT, NT, RNT) with learnable
queries, and ATMoE weights 7 experts with attention between the fused query and the decoupled features.

The tower, the BN-neck heads, input checks, init and loading pretrained towers are the family's
(`ReIDPreTrainedModel` in modeling_reid.py, shipped with every checkpoint beside this file).
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput

try:
    from .configuration_demo import DeMoConfig
    from .configuration_reid import MODALITIES
    from .modeling_reid import (
        TOWER_LAYER_NAMES,
        QuickGELU,
        ReIDBatchNorm1d,
        ReIDLinear,
        ReIDPreTrainedModel,
        float32_region,
    )
except ImportError:  # imported as top-level modules from a checkout
    from configuration_demo import DeMoConfig
    from configuration_reid import MODALITIES
    from modeling_reid import (
        TOWER_LAYER_NAMES,
        QuickGELU,
        ReIDBatchNorm1d,
        ReIDLinear,
        ReIDPreTrainedModel,
        float32_region,
    )
# Modality combinations of the decoupled features, in the order used everywhere (paper eq. 3-8, Fig. 6).
EXPERT_NAMES = ("R", "N", "T", "RN", "RT", "NT", "RNT")
EXPERT_COMBINATIONS = ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))


@dataclass
class DeMoModelOutput(ModelOutput):
    """
    Output of [`DeMoModel`].

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, dim)`):
            Retrieval feature selected by `config.inference_features` (taken before the BN-necks).
        ori_embeddings (`torch.FloatTensor` of shape `(batch_size, 3 * C)`):
            concat(f_R, f_N, f_T), the per-modality features.
        moe_embeddings (`torch.FloatTensor` of shape `(batch_size, 7 * C)`, *optional*):
            The ATMoE (or plain HDM) feature; `None` without HDM.
        logits (`dict[str, torch.FloatTensor]`):
            Identity logits of each supervised head, by head name: `"ori"` (direct classifier) or `"rgb"`, `"nir"`,
            `"tir"` (per-modality classifiers), and `"moe"` with HDM.
        features (`dict[str, torch.FloatTensor]`):
            Pre-BN features of the same heads (same keys, same order); the triplet loss is applied to these.
        feature_sets (`dict[str, torch.FloatTensor]`):
            Named retrieval features for evaluation: `"ori"`, and with HDM `"moe"` and `"all"` = concat(ori, moe).
        expert_weights (`torch.FloatTensor` of shape `(batch_size, heads, 7)`, *optional*):
            Gating weights over the experts R, N, T, RN, RT, NT, RNT.
    """

    embeddings: torch.FloatTensor | None = None
    ori_embeddings: torch.FloatTensor | None = None
    moe_embeddings: torch.FloatTensor | None = None
    logits: dict[str, torch.FloatTensor] | None = None
    features: dict[str, torch.FloatTensor] | None = None
    feature_sets: dict[str, torch.FloatTensor] | None = None
    expert_weights: torch.FloatTensor | None = None


class DeMoPatchIntegration(nn.Module):
    """PIFE for one modality: QuickGELU(Linear(LayerNorm([cls, mean(patches)]))) (paper eq. 2)."""

    def __init__(self, config: DeMoConfig):
        super().__init__()
        dim = config.feature_dim
        self.norm = nn.LayerNorm(2 * dim)
        self.dense = ReIDLinear(2 * dim, dim)
        self.act = QuickGELU()

    def forward(self, cls_token: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([cls_token, patch_tokens.mean(dim=1)], dim=-1)
        return self.act(self.dense(self.norm(fused)))


class _StackParameters(torch.autograd.Function):
    """`torch.stack` of same-shaped tensors whose backward hands each input its gradient with one `split`.

    Why: the batched heads keep one parameter per expert (the authors' state-dict layout) and stack them in every
    forward; autograd's own stack backward issues one `select` per input, which for dozens of experts is most of the
    heads' operator calls. The split views are contiguous, so each gradient is taken over without a copy.
    """

    @staticmethod
    def forward(ctx, *tensors):
        ctx.rows = tensors[0].shape[0]
        return torch.cat(tensors).view(len(tensors), *tensors[0].shape)

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(-1, *grad.shape[2:]).split(ctx.rows)


def stack_parameters(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The tensors stacked along a new first dimension (as `torch.stack`), in `dtype`."""
    return _StackParameters.apply(*tensors).to(dtype)


class DeMoHierarchicalDecoupling(nn.Module):
    """HDM: one learnable query per modality combination cross-attends to that combination's tokens (eq. 3-8).

    The weights live in one `nn.MultiheadAttention` per combination (the authors' layout, state dict and init), but
    the 7 attentions run as a few batched operations on the stacked weights. Each query is one learned vector shared
    by the whole batch, so its key projection folds into it (score = token . W_k^T q per head; the key bias shifts
    all scores of a head equally and cancels in the softmax), and the value projection is applied once to each head's
    attention-weighted sum of the raw tokens instead of to every token. All 7 combinations attend over the three
    modalities' tokens at once, with the modalities outside a combination masked out.
    """

    def __init__(self, config: DeMoConfig):
        super().__init__()
        dim, dropout = config.feature_dim, config.hdm_dropout
        self.num_heads = max(1, dim // 64)
        self.dropout = dropout
        self.queries = nn.Parameter(torch.zeros(len(EXPERT_COMBINATIONS), dim))
        self.attentions = nn.ModuleList(
            nn.MultiheadAttention(dim, self.num_heads, dropout=dropout, batch_first=True) for _ in EXPERT_COMBINATIONS
        )
        # Constant masks per (device, dtype), built on first use: plain attributes rather than buffers, so loading a
        # checkpoint (which holds no copy of them) can never leave them uninitialised.
        self._constants = {}

    def _masks(self, dim: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(outside, head_scale): outside[m, k * heads + h] is True when modality m is not in combination k;
        head_scale[h, j] is head_dim^-0.5 when feature j belongs to head h, else 0 (splits a query by head)."""
        if torch.compiler.is_compiling():
            # Not cached while compiling: the compiler folds them into the graph anyway, and a cache filled inside
            # a compiled graph is a guard that fails on the next call (one recompilation).
            return self._build_masks(dim, device, dtype)
        key = (device, dtype, dim)
        if key not in self._constants:
            self._constants[key] = self._build_masks(dim, device, dtype)
        return self._constants[key]

    def _build_masks(self, dim: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        heads = self.num_heads
        outside = torch.tensor([[m not in c for c in EXPERT_COMBINATIONS] for m in range(3)], device=device)
        head_of = torch.arange(dim, device=device) // (dim // heads)
        head_scale = (head_of[None, :] == torch.arange(heads, device=device)[:, None]) * (dim // heads) ** -0.5
        return outside.repeat_interleave(heads, dim=1), head_scale.to(dtype)

    def forward(self, modality_features: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        """`modality_features` (B, 3, C) and `patch_tokens` (B, 3, L, C) -> decoupled features (B, 7, C)."""
        batch, num_modalities, length, dim = patch_tokens.shape
        experts, heads = len(EXPERT_COMBINATIONS), self.num_heads
        head_dim = dim // heads
        # Keys of modality m: [f_m, F_m] (eq. 3); the three modalities' tokens in one sequence.
        tokens = torch.cat([modality_features.unsqueeze(2), patch_tokens], dim=2).flatten(1, 2)
        dtype = tokens.dtype
        outside, head_scale = self._masks(dim, tokens.device, dtype)
        in_weight = stack_parameters([a.in_proj_weight for a in self.attentions], dtype)  # (7, 3C, C)
        in_bias = stack_parameters([a.in_proj_bias for a in self.attentions], dtype)  # (7, 3C)
        w_q, w_k, w_v = in_weight.split(dim, dim=1)
        b_q, _, b_v = in_bias.split(dim, dim=1)
        query = torch.baddbmm(b_q.unsqueeze(2), w_q, self.queries.to(dtype).unsqueeze(2))  # (7, C, 1)
        # Folded key projection, one row per (combination, head): W_k^T (q restricted to the head) / sqrt(head_dim).
        folded = torch.bmm(query.transpose(1, 2) * head_scale, w_k)  # (7, heads, C)
        scores = torch.matmul(tokens, folded.view(experts * heads, dim).t())  # (B, 3(L+1), 7 * heads)
        scores = scores.view(batch, num_modalities, length + 1, experts * heads)
        scores = scores.masked_fill(outside[None, :, None], float("-inf")).flatten(1, 2)
        weights = F.dropout(scores.softmax(dim=1), self.dropout, self.training)
        # Attention-weighted sums of the raw tokens, then each head's value projection: (7 * heads, B, head_dim).
        # (Layouts keep a unit stride in every matmul operand, forward and backward: CPU bmm is slow otherwise.)
        context = torch.bmm(weights.transpose(1, 2), tokens).transpose(0, 1)  # (7 * heads, B, C)
        values = torch.bmm(context, w_v.reshape(experts * heads, head_dim, dim).transpose(1, 2))
        value_bias = b_v.reshape(experts * heads, 1, head_dim)
        if self.training and self.dropout > 0:  # dropped weights no longer sum to 1: scale the value bias alike
            value_bias = value_bias * weights.sum(dim=1).t().unsqueeze(-1)
        values = (values + value_bias).view(experts, heads, batch, head_dim).transpose(1, 2)
        out_weight = stack_parameters([a.out_proj.weight for a in self.attentions], dtype)  # (7, C, C)
        out_bias = stack_parameters([a.out_proj.bias for a in self.attentions], dtype)  # (7, C)
        out = torch.baddbmm(out_bias.unsqueeze(1), values.reshape(experts, batch, dim), out_weight.transpose(1, 2))
        return out.transpose(0, 1)


class DeMoExpert(nn.Module):
    """The weights of one expert on one head's chunk of a feature: BN(QuickGELU(Linear(x))) (eq. 14).

    No forward: it holds the expert's weights in the authors' layout, and `DeMoMixtureOfExperts` runs all experts at
    once from them.
    """

    def __init__(self, config: DeMoConfig):
        super().__init__()
        dim = config.feature_dim // config.atmoe_heads
        self.dense = ReIDLinear(dim, dim)
        self.act = QuickGELU()
        self.norm = ReIDBatchNorm1d(dim)


class DeMoAttentionGate(nn.Module):
    """ATMoE gating: a reduced query attends over the 7 decoupled features, per head (eq. 9-13)."""

    def __init__(self, config: DeMoConfig):
        super().__init__()
        dim, num_experts, num_heads = config.feature_dim, len(EXPERT_COMBINATIONS), config.atmoe_heads
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.reduction = ReIDLinear(num_experts * dim, dim)
        self.reduction_act = QuickGELU()
        self.reduction_norm = ReIDBatchNorm1d(dim)
        self.q_proj = ReIDLinear(dim, dim, bias=False)
        self.k_proj = ReIDLinear(dim, dim, bias=False)

    def forward(self, decoupled: torch.Tensor) -> torch.Tensor:
        """`decoupled` (B, 7, C) -> weights (B, heads, 7), summing to 1 over the experts."""
        batch, num_experts, dim = decoupled.shape
        query = self.reduction_norm(self.reduction_act(self.reduction(decoupled.flatten(1))))
        query = self.q_proj(query).view(batch, self.num_heads, 1, dim // self.num_heads)
        keys = self.k_proj(decoupled).view(batch, num_experts, self.num_heads, -1).transpose(1, 2)
        scores = (query * keys).sum(-1) * self.scale
        return scores.softmax(dim=-1)


class DeMoSimpleGate(nn.Module):
    """Baseline gating of paper Table 6: a linear score per decoupled feature and a softmax over the experts."""

    def __init__(self, config: DeMoConfig):
        super().__init__()
        self.num_heads = config.atmoe_heads
        self.score = ReIDLinear(config.feature_dim, 1)

    def forward(self, decoupled: torch.Tensor) -> torch.Tensor:
        weights = self.score(decoupled).squeeze(-1).softmax(dim=-1)
        return weights.unsqueeze(1).expand(-1, self.num_heads, -1)


class DeMoMixtureOfExperts(nn.Module):
    """ATMoE: per-head experts on each head's chunk of every decoupled feature, weighted by the gate (eq. 14-15).

    Each expert keeps its own `DeMoExpert` module (state dict and init as the authors'), but all heads x 7 experts run
    as one batched matmul and one batch norm over the stacked weights instead of three small modules per expert.
    Batch norms replaced by another class (the trainer's global-batch ones across processes) are called one by one.
    """

    def __init__(self, config: DeMoConfig):
        super().__init__()
        self.num_heads = config.atmoe_heads
        self.concat = config.gating != "simple_add"
        self.gate = DeMoAttentionGate(config) if config.gating == "attention" else DeMoSimpleGate(config)
        self.experts = nn.ModuleList(
            nn.ModuleList(DeMoExpert(config) for _ in EXPERT_COMBINATIONS) for _ in range(self.num_heads)
        )

    def forward(self, decoupled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`decoupled` (B, 7, C) -> (feature (B, 7C) or (B, C) for simple_add, weights (B, heads, 7))."""
        weights = self.gate(decoupled)
        batch, num_experts, dim = decoupled.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        experts = [expert for per_head in self.experts for expert in per_head]  # head-major: (heads, 7)
        dtype = decoupled.dtype
        weight = stack_parameters([e.dense.weight for e in experts], dtype)  # (heads * 7, d, d)
        bias = stack_parameters([e.dense.bias for e in experts], dtype)
        # Head h's chunk of decoupled feature e, transposed: (heads * 7, d, B).
        chunks = decoupled.permute(1, 2, 0).reshape(num_experts, heads, head_dim, batch).transpose(0, 1)
        hidden = torch.baddbmm(bias.unsqueeze(2), weight, chunks.reshape(heads * num_experts, head_dim, batch))
        hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
        # One batch norm over all experts' channels: (1, channels, B) normalises each channel over the batch.
        norms = [e.norm for e in experts]
        if all(type(norm) is ReIDBatchNorm1d for norm in norms):
            hidden = _stacked_batch_norm(norms, hidden.view(1, -1, batch))
        else:  # norms swapped for another class (e.g. SyncBatchNorm across processes): call each one
            chunks = hidden.transpose(1, 2).unbind(0)
            hidden = torch.stack([norm(chunk) for norm, chunk in zip(norms, chunks)]).transpose(1, 2)
        hidden = hidden.view(heads, num_experts, head_dim, batch) * weights.permute(1, 2, 0).unsqueeze(2)
        # (B, 7, heads * head_dim): each expert's output re-assembled from its head chunks, experts in order.
        weighted = hidden.permute(3, 1, 0, 2).reshape(batch, num_experts, dim)
        feature = weighted.flatten(1) if self.concat else weighted.sum(dim=1)
        return feature, weights


def _stacked_batch_norm(norms: list[nn.BatchNorm1d], hidden: torch.Tensor) -> torch.Tensor:
    """`nn.BatchNorm1d` semantics for `norms` laid side by side over the channels of `hidden` (1, channels, B).

    Running statistics are updated in one stacked buffer and copied back to each module's own buffers; the statistics
    are computed in float32 under mixed precision, as `ReIDBatchNorm1d`'s.
    """
    first = norms[0]
    use_batch = first.training or not first.track_running_stats
    factor = 0.0 if first.momentum is None else first.momentum
    running_mean = running_var = None
    if first.track_running_stats:
        running_mean = torch.cat([n.running_mean for n in norms])
        running_var = torch.cat([n.running_var for n in norms])
        if first.training:
            counters = [n.num_batches_tracked for n in norms]
            torch._foreach_add_(counters, 1)
            if first.momentum is None:  # cumulative moving average
                factor = 1.0 / float(first.num_batches_tracked)
    with float32_region(hidden):  # statistics in float32 under mixed precision, as ReIDBatchNorm1d
        out = F.batch_norm(
            hidden.to(first.weight.dtype),
            running_mean,
            running_var,
            stack_parameters([n.weight for n in norms], first.weight.dtype).flatten(),
            stack_parameters([n.bias for n in norms], first.bias.dtype).flatten(),
            use_batch,
            factor,
            first.eps,
        )
    if use_batch and running_mean is not None:
        torch._foreach_copy_([n.running_mean for n in norms], list(running_mean.split(first.num_features)))
        torch._foreach_copy_([n.running_var for n in norms], list(running_var.split(first.num_features)))
    return out


class DeMoModel(ReIDPreTrainedModel):
    """DeMo for multi-modal ReID: `pixel_values` (B, 3 modalities, 3, H, W) in the order RGB, NIR, TIR."""

    config_class = DeMoConfig
    config: DeMoConfig
    base_model_prefix = "demo"
    input_modalities = ("image",)
    _no_split_modules = TOWER_LAYER_NAMES

    def __init__(self, config: DeMoConfig):
        super().__init__(config)
        dim = config.feature_dim
        if config.use_pife:
            self.patch_integration = nn.ModuleDict({m: DeMoPatchIntegration(config) for m in MODALITIES})
        if config.use_hdm:
            self.decoupling = DeMoHierarchicalDecoupling(config)
        if config.use_atmoe:
            self.mixture_of_experts = DeMoMixtureOfExperts(config)
        head_dims = {"ori": 3 * dim} if config.direct_classifier else {m: dim for m in MODALITIES}
        if config.use_hdm:
            simple_add = config.use_atmoe and config.gating == "simple_add"
            head_dims["moe"] = dim if simple_add else len(EXPERT_COMBINATIONS) * dim
        self.build_heads(head_dims)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """DeMo's own classes: the HDM queries normal(0, C^-0.5); every other module as `ReIDPreTrainedModel`."""
        if isinstance(module, DeMoHierarchicalDecoupling):
            init.normal_(module.queries, std=module.queries.shape[-1] ** -0.5)
        else:
            super()._init_weights(module)

    def forward(
        self,
        pixel_values: torch.Tensor,
        camera_ids: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
    ) -> DeMoModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, 3, height, width)`):
                Normalized RGB, NIR and TIR images of each triple (`config.image_mean` / `image_std`; 0.5 / 0.5 for CLIP).
            camera_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                0-based camera of each triple, for the Side Information Embedding.
            modality_mask (`torch.BoolTensor` of shape `(batch_size, 3)`, *optional*):
                False marks a missing modality; its normalized pixels are replaced by zeros.
        """
        self._check_inputs(pixel_values, camera_ids, modality_mask)
        cls_tokens, patch_tokens = self.encode_images(pixel_values, camera_ids, modality_mask)

        if self.config.use_pife:
            modality_features = torch.stack(
                [self.patch_integration[m](cls_tokens[:, i], patch_tokens[:, i]) for i, m in enumerate(MODALITIES)],
                dim=1,
            )
        else:
            modality_features = cls_tokens
        ori_embeddings = modality_features.flatten(1)

        moe_embeddings = expert_weights = None
        if self.config.use_hdm:
            decoupled = self.decoupling(modality_features, patch_tokens)
            if self.config.use_atmoe:
                moe_embeddings, expert_weights = self.mixture_of_experts(decoupled)
            else:
                moe_embeddings = decoupled.flatten(1)

        if self.config.direct_classifier:
            features = {"ori": ori_embeddings}
        else:
            features = {m: modality_features[:, i] for i, m in enumerate(MODALITIES)}
        if moe_embeddings is not None:
            features["moe"] = moe_embeddings
        logits = self.head_logits(features)

        feature_sets = {"ori": ori_embeddings}
        if moe_embeddings is not None:
            feature_sets.update(moe=moe_embeddings, all=torch.cat([ori_embeddings, moe_embeddings], dim=-1))
        embeddings = feature_sets.get(self.config.inference_features, ori_embeddings)

        return DeMoModelOutput(
            embeddings=embeddings,
            ori_embeddings=ori_embeddings,
            moe_embeddings=moe_embeddings,
            logits=logits,
            features=features,
            feature_sets=feature_sets,
            expert_weights=expert_weights,
        )


DeMoConfig.register_for_auto_class()
DeMoModel.register_for_auto_class("AutoModel")

__all__ = ["DeMoModel", "DeMoModelOutput", "EXPERT_NAMES"]
