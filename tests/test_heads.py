"""The batched HDM and ATMoE against the module-per-expert implementation they replace (tests/module_per_expert_heads.py):
same state-dict layout, same outputs and gradients, same batch-norm bookkeeping, working attention dropout, and far
fewer operator calls."""

import collections

import pytest
import torch
from module_per_expert_heads import ModulePerExpertDecoupling, ModulePerExpertMixture, heads_config
from torch.utils._python_dispatch import TorchDispatchMode

from modeling_demo import DeMoHierarchicalDecoupling, DeMoMixtureOfExperts


def paired_decoupling(dim, dropout=0.0, seed=0):
    config = heads_config(dim, dropout=dropout)
    torch.manual_seed(seed)
    ours = DeMoHierarchicalDecoupling(config)
    with torch.no_grad():  # weights at their initial scale; queries and the biases PyTorch starts at zero made nonzero
        ours.queries.normal_(0, dim**-0.5)
        for name, p in ours.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    oracle = ModulePerExpertDecoupling(config)
    oracle.load_state_dict(ours.state_dict())
    return ours, oracle


def paired_mixture(dim, heads, gating, seed=0):
    config = heads_config(dim, heads, gating)
    torch.manual_seed(seed)
    ours = DeMoMixtureOfExperts(config)
    with torch.no_grad():  # PyTorch's initial scales, batch norms moved off their (1, 0) start
        for name, p in ours.named_parameters():
            if ".norm." in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
        for name, buffer in ours.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.5)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    oracle = ModulePerExpertMixture(config)
    oracle.load_state_dict(ours.state_dict())
    return ours, oracle


def hdm_inputs(batch, dim, length, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, 3, dim, generator=gen, dtype=dtype).requires_grad_()
    patches = torch.randn(batch, 3, length, dim, generator=gen, dtype=dtype).requires_grad_()
    return features, patches


def forward_and_grads(module, inputs, output_index=None):
    for p in module.parameters():
        p.grad = None
    for x in inputs:
        x.grad = None
    out = module(*inputs)
    out = out if output_index is None else out[output_index]
    # A fixed random projection of the output, averaged over the batch like a loss, so every output element gets a
    # distinct gradient of the size a training loss gives.
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype) / out.shape[0]
    (out * probe).sum().backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return out.detach(), grads, [x.grad.clone() for x in inputs]


def assert_same(ours, oracle, atol):
    out_a, grads_a, input_grads_a = ours
    out_b, grads_b, input_grads_b = oracle
    assert (out_a - out_b).abs().max().item() < atol
    # The key bias cancels in the softmax: its gradient is zero in exact arithmetic, rounding noise in the oracle.
    assert set(grads_b) - set(grads_a) == set()
    for name, grad in grads_b.items():
        assert (grads_a[name] - grad).abs().max().item() < atol, name
    for a, b in zip(input_grads_a, input_grads_b):
        assert (a - b).abs().max().item() < atol


def test_state_dict_layout_is_the_module_per_expert_one():
    for ours, oracle in (paired_decoupling(128), paired_mixture(128, 4, "attention")):
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in oracle.state_dict().items()}


@pytest.mark.parametrize("dim, length", [(128, 5), (512, 3)])  # 2 and 8 attention heads
@pytest.mark.parametrize("train", [False, True])  # dropout 0: train mode only differs through dropout
def test_decoupling_matches_module_per_expert(dim, length, train):
    ours, oracle = paired_decoupling(dim)
    ours.train(train), oracle.train(train)
    inputs = hdm_inputs(4, dim, length)
    assert_same(forward_and_grads(ours, inputs), forward_and_grads(oracle, inputs), atol=1e-5)


def test_decoupling_is_exact_in_float64():
    ours, oracle = paired_decoupling(128)
    ours.double(), oracle.double()
    inputs = hdm_inputs(3, 128, 4, dtype=torch.float64)
    assert_same(forward_and_grads(ours, inputs), forward_and_grads(oracle, inputs), atol=1e-11)


@pytest.mark.parametrize("gating", ["attention", "simple_add", "simple_concat"])
@pytest.mark.parametrize("heads", [2, 4])
@pytest.mark.parametrize("train", [False, True])
def test_mixture_matches_module_per_expert(gating, heads, train):
    ours, oracle = paired_mixture(128, heads, gating)
    ours.train(train), oracle.train(train)
    decoupled = torch.randn(6, 7, 128, generator=torch.Generator().manual_seed(3)).requires_grad_()
    got = forward_and_grads(ours, [decoupled], output_index=0)
    expected = forward_and_grads(oracle, [decoupled], output_index=0)
    assert_same(got, expected, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ours(decoupled)[1], oracle(decoupled)[1], rtol=0, atol=1e-6)  # gate weights


@pytest.mark.parametrize("momentum", [0.1, None])  # None: cumulative average over the batches seen
def test_mixture_batch_norm_statistics_follow_module_per_expert(momentum):
    ours, oracle = paired_mixture(64, 2, "attention")
    for module in (ours, oracle):
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.momentum = momentum
        module.train()
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(5, 7, 64, generator=gen) * 2 + 1
            ours(x), oracle(x)
    expected = oracle.state_dict()
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    assert int(ours.experts[1][5].norm.num_batches_tracked) == 3
    ours.eval(), oracle.eval()  # and inference uses the updated running statistics
    x = torch.randn(3, 7, 64, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], oracle(x)[0], rtol=0, atol=1e-5)


def test_decoupling_dropout_everything_leaves_the_output_bias():
    """With every attention weight dropped, each combination's output is its out-projection bias (as in PyTorch's
    MultiheadAttention, where the value bias is dropped along with the weights)."""
    ours, oracle = paired_decoupling(128, dropout=1.0)
    ours.train(), oracle.train()
    inputs = hdm_inputs(2, 128, 3)
    expected = torch.stack([a.out_proj.bias for a in oracle.attentions]).detach()
    with torch.no_grad():
        for module in (ours, oracle):
            torch.testing.assert_close(module(*inputs), expected.expand(2, -1, -1), rtol=0, atol=1e-6)


def test_decoupling_dropout_is_active_in_training_and_unbiased():
    ours, _ = paired_decoupling(64, dropout=0.3)
    inputs = [x.detach() for x in hdm_inputs(2, 64, 2)]
    with torch.no_grad():
        clean = ours.eval()(*inputs)
        ours.train()
        torch.manual_seed(0)
        draws = torch.stack([ours(*inputs) for _ in range(4000)])
    assert not torch.equal(draws[0], draws[1])
    assert (draws[0] - clean).abs().max() > 1e-3
    # The output is linear in the (rescaled) attention weights, so dropout leaves its mean unchanged.
    spread = draws.std(dim=0) / 4000**0.5
    assert ((draws.mean(dim=0) - clean).abs() <= 5 * spread + 1e-6).all()


class _CountCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _calls_of_a_training_step(decoupling, mixture, inputs):
    def step():
        for p in [*decoupling.parameters(), *mixture.parameters(), *inputs]:
            p.grad = None
        feature, _ = mixture(decoupling(*inputs))
        feature.sum().backward()

    step()  # first call: lazy initialisation outside the count
    with _CountCalls() as counter:
        step()
    return counter.calls


def test_batched_heads_issue_a_quarter_of_the_operator_calls():
    dim = 512
    ours = paired_decoupling(dim)[0], paired_mixture(dim, 4, "attention")[0]
    oracle = paired_decoupling(dim)[1], paired_mixture(dim, 4, "attention")[1]
    inputs = hdm_inputs(4, dim, 2)
    for module in (*ours, *oracle):
        module.train()
    ours_calls = _calls_of_a_training_step(*ours, inputs)
    oracle_calls = _calls_of_a_training_step(*oracle, inputs)
    assert sum(ours_calls.values()) <= sum(oracle_calls.values()) / 4
    # The slow backward of fancy indexing (index_put) is gone.
    assert oracle_calls["aten.index_put_.default"] + oracle_calls["aten.index.Tensor"] > 0
    assert not any(name.startswith(("aten.index", "aten._index_put")) for name in ours_calls)


class _CountingBatchNorm(torch.nn.BatchNorm1d):
    """Stands for a batch norm of another class (as the trainer swaps in across processes)."""

    calls = 0

    def forward(self, input):
        type(self).calls += 1
        return super().forward(input) * 2.0


def test_mixture_calls_batch_norms_of_another_class_one_by_one():
    ours, oracle = paired_mixture(64, 2, "attention")
    for module in (ours, oracle):
        for per_head in module.experts:
            for expert in per_head:
                norm = _CountingBatchNorm(expert.norm.num_features)
                norm.load_state_dict(expert.norm.state_dict())
                expert.norm = norm
        module.train()
    decoupled = torch.randn(5, 7, 64, generator=torch.Generator().manual_seed(2)).requires_grad_()
    _CountingBatchNorm.calls = 0
    got = forward_and_grads(ours, [decoupled], output_index=0)
    assert _CountingBatchNorm.calls == 2 * 7
    assert_same(got, forward_and_grads(oracle, [decoupled], output_index=0), atol=1e-5)
    expected = oracle.state_dict()
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
