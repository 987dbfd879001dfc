"""The DeMo learning-rate schedule: per-epoch cosine with a shared linear warm-up and seeded noise.

The original steps a timm-style cosine scheduler once per epoch, calling ``scheduler.step(epoch)`` at the start of
each epoch with ``epoch`` counting from 1, so training epoch ``e`` (1-based) runs at schedule index ``t = e`` and the
last epoch (``t = num_epochs``) already runs at the floor ``min_lr``. For every parameter group with base lr ``b``:

- ``t < warmup``:        ``lr = w0 + t * (b - w0) / warmup``
- ``t >= num_epochs``:   ``lr = min_lr`` (no noise)
- otherwise:             ``lr = min_lr + 0.5 * (b - min_lr) * (1 + cos(pi * t / num_epochs))``
- for ``0 <= t < num_epochs`` the lr is multiplied by ``1 + n``, ``n`` drawn from ``torch.Generator`` seeded with
  ``noise_seed + t`` by repeating ``randn * noise_std`` until ``|n| < noise_limit``.

``w0`` and ``min_lr`` are the same for all groups (0.1x and 0.001x the head lr 3.5e-4 in the recipes), which is why
the 5e-6 vision tower starts its warm-up *above* its target lr. One departure (ours): a group whose base lr is 0 stays
at 0 throughout. In the original, the shared warm-up start and floor would move it (``--vision-tower-lr 0`` trained the
tower at 3.5e-5 in the first epoch); every other group keeps the original's numbers.

The HF Trainer steps the scheduler once per optimizer step, so :class:`DeMoCosineLR` maps optimizer step ``s`` (0-based,
``last_epoch`` in torch terms) to ``t = s // steps_per_epoch + 1``: the lr is constant within an epoch.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["EPOCH_SCHEDULES", "DeMoCosineLR", "demo_cosine_lr", "schedule_noise"]

#: The per-epoch schedules of ``--lr-schedule`` (``trainer`` selects the Trainer's ``--lr-scheduler-type`` instead).
EPOCH_SCHEDULES = ("demo_cosine", "demo_cosine_plain")


def schedule_noise(t: int, seed: int = 42, limit: float = 0.67, std: float = 1.0) -> float:
    """The multiplicative noise for schedule index ``t``: a normal draw (seeded by ``seed + t``) truncated to ``|n| < limit``."""
    if limit <= 0:
        raise ValueError(f"`limit` (noise_limit) must be > 0, got {limit}")
    g = torch.Generator()
    g.manual_seed(seed + t)
    while True:
        n = torch.randn(1, generator=g).item() * std
        if abs(n) < limit:
            return n


def demo_cosine_lr(
    t: int,
    base_lr: float,
    num_epochs: int,
    warmup_epochs: int = 10,
    warmup_start_lr: float = 3.5e-5,
    min_lr: float = 3.5e-7,
    noise: bool = True,
    noise_seed: int = 42,
    noise_limit: float = 0.67,
    noise_std: float = 1.0,
) -> float:
    """Learning rate at schedule index ``t`` (the original's 1-based epoch number) for a group with ``base_lr``."""
    if num_epochs < 1:
        raise ValueError(f"`num_epochs` must be >= 1, got {num_epochs}")
    if warmup_epochs < 0:
        raise ValueError(f"`warmup_epochs` must be >= 0, got {warmup_epochs}")
    if base_lr == 0:
        return 0.0  # a group at rate 0 must not move: not even at the shared warm-up start or floor
    if t < warmup_epochs:
        lr = warmup_start_lr + t * (base_lr - warmup_start_lr) / warmup_epochs
    elif t >= num_epochs:
        return min_lr
    else:
        lr = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t / num_epochs))
    if noise and 0 <= t < num_epochs:
        lr = lr * (1.0 + schedule_noise(t, noise_seed, noise_limit, noise_std))
    return lr


class DeMoCosineLR(LRScheduler):
    """Per-epoch :func:`demo_cosine_lr` driven by per-optimizer-step ``step()`` calls (HF Trainer convention).

    Each group's ``initial_lr`` (its lr when the scheduler is created) is its ``base_lr``. The state dict holds only
    numbers, so checkpoints resume exactly.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        num_epochs: int,
        steps_per_epoch: int = 1,
        warmup_epochs: int = 10,
        warmup_start_lr: float = 3.5e-5,
        min_lr: float = 3.5e-7,
        noise: bool = True,
        noise_seed: int = 42,
        noise_limit: float = 0.67,
        noise_std: float = 1.0,
        last_epoch: int = -1,
    ):
        if int(steps_per_epoch) < 1:
            raise ValueError(f"`steps_per_epoch` must be >= 1, got {steps_per_epoch}")
        if int(num_epochs) < 1:
            raise ValueError(f"`num_epochs` must be >= 1, got {num_epochs}")
        self.num_epochs = int(num_epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_start_lr = float(warmup_start_lr)
        self.min_lr = float(min_lr)
        self.noise = bool(noise)
        self.noise_seed = int(noise_seed)
        self.noise_limit = float(noise_limit)
        self.noise_std = float(noise_std)
        super().__init__(optimizer, last_epoch)

    def schedule_index(self, step: int | None = None) -> int:
        """The original's 1-based epoch index for optimizer step ``step`` (default: the current one)."""
        step = self.last_epoch if step is None else step
        return max(step, 0) // self.steps_per_epoch + 1

    def lr_at(self, t: int) -> list[float]:
        """Learning rates of all groups at schedule index ``t``."""
        return [
            demo_cosine_lr(
                t,
                base,
                self.num_epochs,
                self.warmup_epochs,
                self.warmup_start_lr,
                self.min_lr,
                self.noise,
                self.noise_seed,
                self.noise_limit,
                self.noise_std,
            )
            for base in self.base_lrs
        ]

    def get_lr(self) -> list[float]:
        return self.lr_at(self.schedule_index())
