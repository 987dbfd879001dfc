"""HDM + ATMoE forward + backward: the batched heads of modeling_demo against the module-per-expert oracle.

Why: the heads were rewritten as a few batched operations (issue target: at least 3.5x faster on CPU, at most a
quarter of the operator calls). Both run in one process, interleaved, on the same inputs and the same weights (the
oracle loads the batched heads' state dict), in training mode with the default HDM dropout, the shapes of a training
batch of the paper's model: C = 512, 129 tokens per modality, 4 ATMoE heads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from harness import count_operator_calls, interleaved_seconds
from modeling_demo import DeMoHierarchicalDecoupling, DeMoMixtureOfExperts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from module_per_expert_heads import ModulePerExpertDecoupling, ModulePerExpertMixture, heads_config  # noqa: E402


def _step(decoupling, mixture, features, patches):
    def run():
        for p in (*decoupling.parameters(), *mixture.parameters()):
            p.grad = None
        feature, _ = mixture(decoupling(features, patches))
        feature.sum().backward()

    return run


def run_heads_suite(device: str, batch: int, repeats: int, warmup: int, dim: int = 512, tokens: int = 129,
                    heads: int = 4, dropout: float = 0.1, log=print) -> dict:
    config = heads_config(dim, heads, "attention", dropout)
    torch.manual_seed(0)
    ours = DeMoHierarchicalDecoupling(config).to(device), DeMoMixtureOfExperts(config).to(device)
    oracle = ModulePerExpertDecoupling(config).to(device), ModulePerExpertMixture(config).to(device)
    for mine, theirs in zip(ours, oracle):
        theirs.load_state_dict(mine.state_dict())
        mine.train(), theirs.train()
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(batch, 3, dim, generator=gen).to(device).requires_grad_()
    patches = torch.randn(batch, 3, tokens - 1, dim, generator=gen).to(device).requires_grad_()
    steps = {"module_per_expert": _step(*oracle, features, patches), "batched": _step(*ours, features, patches)}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    timing = interleaved_seconds(steps, repeats, warmup, sync)
    calls = {name: count_operator_calls(step) for name, step in steps.items()}
    result = {
        "batch": batch, "dim": dim, "tokens_per_modality": tokens, "atmoe_heads": heads, "hdm_dropout": dropout,
        "median_s": timing["median_s"], "times_s": timing["times_s"],
        "speedup_median_of_pairs": timing["ratio_median"]["batched"],
        "operator_calls": calls, "operator_call_ratio": calls["batched"] / calls["module_per_expert"],
    }
    log(f"  heads fwd+bwd batch {batch}: module-per-expert {timing['median_s']['module_per_expert']:.3f} s, "
        f"batched {timing['median_s']['batched']:.3f} s, speed-up {result['speedup_median_of_pairs']:.1f}x; "
        f"operator calls {calls['module_per_expert']} -> {calls['batched']}")
    return result
