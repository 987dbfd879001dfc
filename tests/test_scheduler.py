"""The demo_cosine schedule against the original's reference values, and its per-step mapping in the Trainer."""

import math

import pytest
import torch

from mmreid.training.scheduler import DeMoCosineLR, demo_cosine_lr

BASES = (3.5e-4, 7e-4, 5e-6)  # head weights, head biases (x2), vision tower
REFERENCE = {
    1: (2.338133e-05, 3.568729e-05, 1.125117e-05),
    5: (3.033182e-04, 5.790620e-04, 3.151358e-05),
    10: (2.705308e-04, 5.410330e-04, 3.892875e-06),
    30: (7.802583e-05, 1.559041e-04, 1.260082e-06),
    49: (7.408118e-07, 1.108909e-06, 3.779733e-07),
    50: (3.5e-07, 3.5e-07, 3.5e-07),
}


def _independent_formula(t, base, epochs=50, warmup=10):
    """Second, independent spelling of the original schedule (timm-style cosine + truncated normal noise)."""
    w0, floor = 0.1 * 3.5e-4, 0.001 * 3.5e-4
    if t >= epochs:
        return floor
    lr = w0 + t * (base - w0) / warmup if t < warmup else floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t / epochs))
    g = torch.Generator()
    g.manual_seed(42 + t)
    n = torch.randn(1, generator=g).item()
    while abs(n) >= 0.67:
        n = torch.randn(1, generator=g).item()
    return lr * (1 + n)


@pytest.mark.parametrize("t", sorted(REFERENCE))
def test_reference_values(t):
    for base, ref in zip(BASES, REFERENCE[t]):
        got = demo_cosine_lr(t, base, num_epochs=50, warmup_epochs=10)
        # The figures carry 7 significant digits: ours must round to exactly those digits, and be exact
        # (1e-12 relative) where the reference is exact (the floor at t = 50) and against the independent formula.
        assert f"{got:.6e}" == f"{ref:.6e}"
        if t == 50:
            assert got == pytest.approx(ref, rel=1e-12)
        assert got == pytest.approx(_independent_formula(t, base), rel=1e-12)


def test_tower_starts_above_its_target_and_plain_has_no_noise():
    assert demo_cosine_lr(1, 5e-6, 50, 10, noise=False) > 5e-6
    plain = [demo_cosine_lr(t, 3.5e-4, 50, 10, noise=False) for t in range(10, 50)]
    assert all(a > b for a, b in zip(plain, plain[1:]))  # monotone cosine after warm-up
    assert demo_cosine_lr(10, 3.5e-4, 50, 10, noise=False) == pytest.approx(
        3.5e-7 + 0.5 * (3.5e-4 - 3.5e-7) * (1 + math.cos(math.pi * 10 / 50)), rel=1e-12
    )


def test_scheduler_steps_per_epoch_with_one_based_index():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in BASES]
    opt = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(params, BASES)])
    steps_per_epoch = 3
    sched = DeMoCosineLR(opt, num_epochs=50, steps_per_epoch=steps_per_epoch, warmup_epochs=10)
    seen = {}
    for step in range(50 * steps_per_epoch):
        epoch = step // steps_per_epoch + 1  # training epoch (1-based) runs at t = epoch
        lrs = [g["lr"] for g in opt.param_groups]
        seen.setdefault(epoch, lrs)
        assert lrs == seen[epoch]  # constant within an epoch
        opt.step()
        sched.step()
    for t, ref in REFERENCE.items():
        assert seen[t] == pytest.approx(list(ref), rel=1e-6)


def test_scheduler_state_dict_resumes_exactly():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=3.5e-4)
    sched = DeMoCosineLR(opt, num_epochs=20, steps_per_epoch=2, warmup_epochs=5)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=3.5e-4)
    sched2 = DeMoCosineLR(opt2, num_epochs=20, steps_per_epoch=2, warmup_epochs=5)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = sched2.get_lr()[0]
    for _ in range(5):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_bad_arguments_are_named():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        DeMoCosineLR(opt, num_epochs=5, steps_per_epoch=0)
    with pytest.raises(ValueError, match="num_epochs"):
        demo_cosine_lr(1, 1e-3, num_epochs=0)
