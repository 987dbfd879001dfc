"""The module-per-expert HDM and ATMoE as they were before they were batched: the oracle for the batched heads.

Why kept: `modeling_demo` now runs the 7 HDM cross-attentions and the heads x 7 ATMoE experts as a few stacked
operations; these classes are the previous implementation (one `nn.MultiheadAttention` per modality combination, one
Linear + QuickGELU + BatchNorm module per expert, called one by one), with the same state-dict layout, so
`load_state_dict` moves weights between the two. tests/test_heads.py compares outputs and gradients against them and
benchmarks/run.py times them side by side. Only the gate is shared (it was not changed). Like the batched modules,
they take a `DeMoConfig`; `heads_config` makes one for given head sizes.
"""

import torch
from torch import nn

from mmreid.hub.backbones import tiny_demo_config
from modeling_demo import EXPERT_COMBINATIONS, DeMoAttentionGate, DeMoSimpleGate


def heads_config(dim: int, heads: int = 2, gating: str = "attention", dropout: float = 0.0):
    """A `DeMoConfig` whose feature size is `dim`, with `heads` ATMoE heads, `gating` and HDM dropout `dropout`."""
    return tiny_demo_config(
        vision_overrides=dict(projection_dim=dim), atmoe_heads=heads, gating=gating, hdm_dropout=dropout
    )


class QuickGELU(nn.Module):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * torch.sigmoid(1.702 * hidden_states)


class ModulePerExpertDecoupling(nn.Module):
    """HDM: one learnable query per modality combination cross-attends to that combination's tokens (eq. 3-8)."""

    def __init__(self, config):
        super().__init__()
        dim, dropout = config.feature_dim, config.hdm_dropout
        num_heads = max(1, dim // 64)
        self.queries = nn.Parameter(torch.zeros(len(EXPERT_COMBINATIONS), dim))
        self.attentions = nn.ModuleList(
            nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True) for _ in EXPERT_COMBINATIONS
        )

    def forward(self, modality_features: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        batch = modality_features.shape[0]
        keys = torch.cat([modality_features.unsqueeze(2), patch_tokens], dim=2)
        decoupled = []
        for query, attention, combination in zip(self.queries, self.attentions, EXPERT_COMBINATIONS):
            memory = keys[:, list(combination)].flatten(1, 2)
            query = query.to(memory.dtype).expand(batch, 1, -1)
            out, _ = attention(query, memory, memory, need_weights=False)
            decoupled.append(out.squeeze(1))
        return torch.stack(decoupled, dim=1)


class ModulePerExpertExpert(nn.Module):
    """One expert on one head's chunk: BN(QuickGELU(Linear(x))) (eq. 14)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.act = QuickGELU()
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(hidden_states)))


class ModulePerExpertMixture(nn.Module):
    """ATMoE: per-head experts on each head's chunk of every decoupled feature, weighted by the gate (eq. 14-15)."""

    def __init__(self, config):
        super().__init__()
        num_experts, num_heads = len(EXPERT_COMBINATIONS), config.atmoe_heads
        self.num_heads = num_heads
        self.concat = config.gating != "simple_add"
        if config.gating == "attention":
            self.gate = DeMoAttentionGate(config)
        else:
            self.gate = DeMoSimpleGate(config)
        head_dim = config.feature_dim // num_heads
        self.experts = nn.ModuleList(
            nn.ModuleList(ModulePerExpertExpert(head_dim) for _ in range(num_experts)) for _ in range(num_heads)
        )

    def forward(self, decoupled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.gate(decoupled)
        chunks = decoupled.chunk(self.num_heads, dim=-1)
        per_head = []
        for head, (experts, chunk) in enumerate(zip(self.experts, chunks)):
            outputs = torch.stack([expert(chunk[:, e]) for e, expert in enumerate(experts)], dim=1)
            per_head.append(outputs * weights[:, head].unsqueeze(-1))
        weighted = torch.cat(per_head, dim=-1)
        feature = weighted.flatten(1) if self.concat else weighted.sum(dim=1)
        return feature, weights
