"""What makes N processes compute the same math as one: global-batch statistics and gradient-carrying gathers.

P x K is the *global* batch (see :mod:`mmreid.data.sampler`); each rank holds P / N identities of it. Two parts of the
loss look across the whole batch, so both must see every rank's rows, with exact gradients:

- the batch-hard triplet loss mines positives and negatives over the gathered global batch
  (:func:`all_gather_with_grad`: its backward sends each rank's share of the gradient back to it);
- BatchNorm layers in training normalise with the statistics of the global batch: torch's ``SyncBatchNorm`` on
  GPUs, :class:`GlobalBatchNorm1d` (built on the autograd-aware ``all_reduce``) on CPU processes (gloo).

With DDP averaging the ranks' gradients, each rank's loss (its own anchors, the global pool) then gives exactly the
gradient of the single-process loss. Dropout is the one per-process randomness left.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

__all__ = ["GlobalBatchNorm1d", "all_gather_with_grad", "convert_to_global_batchnorm", "inference_accelerator",
           "is_distributed", "launcher_shortfall"]


def launcher_shortfall(world_size: int, environ=None, parent_cmdline: list[str] | None = None) -> str | None:
    """One line when the launcher was asked for more processes than the run has, else None.

    ``accelerate launch --num_processes N --cpu`` (or a config with ``use_cpu`` and another distributed type than
    MULTI_GPU) starts ONE process through its simple launcher: that launcher sets ``MASTER_ADDR`` / ``MASTER_PORT``
    for N > 1 but no ``WORLD_SIZE``, and ``ACCELERATE_DYNAMO_BACKEND`` marks any accelerate launch. N is read from
    the launcher's command line where it can be (``parent_cmdline``, default: the parent process's).
    """
    import os

    environ = os.environ if environ is None else environ
    launched_by_accelerate = "ACCELERATE_DYNAMO_BACKEND" in environ
    asked_several = "MASTER_PORT" in environ and "WORLD_SIZE" not in environ
    if world_size > 1 or not (launched_by_accelerate and asked_several):
        return None
    if parent_cmdline is None:
        try:
            with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
                parent_cmdline = f.read().decode(errors="replace").split("\0")
        except OSError:
            parent_cmdline = []
    asked = "several"
    for i, token in enumerate(parent_cmdline):
        name, _, value = token.partition("=")
        if name in ("--num_processes", "--num-processes"):
            asked = value or (parent_cmdline[i + 1] if i + 1 < len(parent_cmdline) else asked)
    count = asked if asked.isdigit() else "N"
    return (f"accelerate launch asked for {asked} processes but started {world_size} (its --cpu flag runs a single "
            f"process); for {count} CPU processes use accelerate launch --config_file accelerate_configs/cpu_2proc.yaml "
            f"train.py ... (2 processes) or torchrun --nproc_per_node {count} train.py ...")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all processes in rank order; gradients flow back to the rank that owns each row."""
    if not is_distributed():
        return tensor
    return torch.cat(dist_fn.all_gather(tensor.contiguous()), dim=0)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the rows of all processes (any backend, gloo included).

    Mean and variance are computed in two passes (sum, then sum of squared deviations), each summed across ranks
    with ``torch.distributed.nn.functional.all_reduce`` so that the backward pass is exact. In eval mode, or
    without a process group, it is a plain ``BatchNorm1d``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        if input.dim() != 2:
            raise ValueError(f"GlobalBatchNorm1d expects (batch, features), got shape {tuple(input.shape)}")
        x = input.float()
        count = dist_fn.all_reduce(x.new_tensor([float(x.shape[0])]))
        mean = dist_fn.all_reduce(x.sum(0)) / count
        var = dist_fn.all_reduce((x - mean).pow(2).sum(0)) / count
        if self.track_running_stats:
            with torch.no_grad():
                n = count.item()
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        out = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(input.dtype)


def _swap_batchnorm(module: nn.Module, new_class: type[nn.BatchNorm1d]) -> nn.Module:
    """A ``new_class`` layer sharing ``module``'s parameters and buffers (frozen biases stay frozen)."""
    swapped = new_class(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    if module.affine:
        swapped.weight, swapped.bias = module.weight, module.bias
    if module.track_running_stats:
        swapped.running_mean, swapped.running_var = module.running_mean, module.running_var
        swapped.num_batches_tracked = module.num_batches_tracked
    swapped.train(module.training)
    return swapped


def convert_to_global_batchnorm(model: nn.Module) -> nn.Module:
    """Make every BatchNorm1d of ``model`` use global-batch statistics in training (in place; returns ``model``).

    On CUDA, torch's ``SyncBatchNorm``; elsewhere :class:`GlobalBatchNorm1d`. A no-op in a single process.
    """
    if not is_distributed():
        return model
    if next(model.parameters()).device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _swap_all(model)
    return model


def _swap_all(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm1d) and not isinstance(child, GlobalBatchNorm1d):
            setattr(module, name, _swap_batchnorm(child, GlobalBatchNorm1d))
        else:
            _swap_all(child)


def inference_accelerator():
    """An ``Accelerator`` for eval.py / embed.py under this launch. Under torchrun / accelerate launch without CUDA it
    needs ``cpu=True`` to use gloo, otherwise every process would silently run alone. Its process group is destroyed
    at exit (``end_training``): a gloo group left to the interpreter's teardown can abort a process that has
    finished its work ("terminate called without an active exception"), failing the whole launch."""
    import atexit
    import os

    from accelerate import Accelerator

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.environ.get("LOCAL_RANK") is not None
    accelerator = Accelerator(cpu=launched and not torch.cuda.is_available())
    if launched:
        atexit.register(accelerator.end_training)
    return accelerator
