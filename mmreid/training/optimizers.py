"""``--optim`` and ``--optim-args``: which optimizer trains the three parameter groups, resolved once here for the
trainer and for the check ``train.py`` runs before any work.

Why a module of its own: the Trainer's names (``adamw_torch``, ``sgd``, ...) hold no plain Adam, the authors'
optimizer (L2 weight decay in the gradient; AdamW's decoupled decay is another optimizer), so :data:`AUTHORS_OPTIMIZER`
is resolved here and every other name by ``Trainer.get_optimizer_cls_and_kwargs``. That resolution reads some
``--optim-args`` keys per optimizer and skips the others without a word, and a few optimizers (GaLore, LOMO, ...)
bring their own parameter groups: both are refused here in one line.
"""

from __future__ import annotations

import torch
from transformers import Trainer
from transformers.trainer_optimizer import is_optimizer_factory

from ..errors import UsageError, first_line

__all__ = ["ADAM_SWITCHES", "AUTHORS_OPTIMIZER", "build_optimizer", "check_optimizer_options",
           "optimizer_cls_and_kwargs", "parse_optim_args"]

# --optim's default: torch.optim.Adam, as the authors train.
AUTHORS_OPTIMIZER = "adam"
# The switches of torch.optim.Adam that --optim-args may set under --optim adam (its numbers have flags of their own).
ADAM_SWITCHES = ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay")
# Keys of --optim-args that have a flag of their own, for the refusal.
OWN_FLAGS = {"lr": "--learning-rate", "weight_decay": "--weight-decay", "eps": "--adam-epsilon",
             "betas": "--adam-beta1 / --adam-beta2"}


def parse_optim_args(text: str | None) -> dict[str, str]:
    """``--optim-args`` as the Trainer reads it (``key=value`` pairs separated by commas)."""
    pairs = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--optim-args: expected key=value pairs separated by commas, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def _as_bool(text: str) -> bool:
    return text.lower() in ("true", "1", "yes")


def _name(args) -> str:
    return getattr(args.optim, "value", args.optim)


def optimizer_cls_and_kwargs(args, model=None) -> tuple[type, dict]:
    """(optimizer class, its keyword arguments) for ``args.optim``; a name the Trainer cannot build here (a package
    missing, a bad ``--optim-args`` value) is a :class:`UsageError`."""
    if args.optim == AUTHORS_OPTIMIZER:
        kwargs = {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}
        for key, text in parse_optim_args(args.optim_args).items():
            if key not in ADAM_SWITCHES:
                flag = f" (it has a flag of its own: {OWN_FLAGS[key]})" if key in OWN_FLAGS else ""
                raise UsageError(f"--optim-args {key}: --optim {AUTHORS_OPTIMIZER} takes {', '.join(ADAM_SWITCHES)}"
                                 f"{flag}")
            kwargs[key] = _as_bool(text)
        return torch.optim.Adam, kwargs
    parse_optim_args(args.optim_args)  # the Trainer's parser fails on these with a bare unpacking error
    try:
        return Trainer.get_optimizer_cls_and_kwargs(args, model)
    except Exception as exc:  # a missing package (bitsandbytes, galore, lomo, ...), a value that is no number
        raise UsageError(f"--optim {_name(args)}: {first_line(exc, 300)}") from None


def build_optimizer(groups: list[dict], args, resolved: tuple[type, dict]) -> torch.optim.Optimizer:
    """The optimizer ``resolved`` (from :func:`optimizer_cls_and_kwargs`) over ``groups``, each group keeping its own
    lr and weight decay; refused in one line when it would bring its own groups or leave an ``--optim-args`` key
    unread (every group must hold the value given)."""
    optimizer_cls, kwargs = resolved
    name = _name(args)
    if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(kwargs):
        raise UsageError(f"--optim {name} builds its own parameter groups; this trainer trains three (tower, head "
                         f"weights, head biases) at their own lrs: use {AUTHORS_OPTIMIZER} (the default), adamw_torch, "
                         "sgd, adagrad or rmsprop")
    optimizer = optimizer_cls(groups, **kwargs)
    for key, text in parse_optim_args(args.optim_args).items():
        if key not in optimizer.defaults:
            raise UsageError(f"--optim-args {key}: --optim {name} ({type(optimizer).__name__}) has no option {key}; "
                             f"it has {', '.join(k for k in optimizer.defaults if k != 'lr')}")
        default = optimizer.defaults[key]
        wanted = _as_bool(text) if isinstance(default, bool) or default is None else text
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                wanted = float(text)
            except ValueError:
                raise UsageError(f"--optim-args {key}={text}: expected a number") from None
        if any(group[key] != wanted for group in optimizer.param_groups):
            instead = f": set it with {OWN_FLAGS[key]}" if key in OWN_FLAGS else ""
            raise UsageError(f"--optim-args {key}={text}: --optim {name} does not read it{instead}")
    return optimizer


def check_optimizer_options(args) -> None:
    """``--optim`` / ``--optim-args`` checked before any work: the optimizer is built once over three one-number
    groups shaped like the trainer's (the model is not needed; the optimizers that would need it are refused)."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr, "weight_decay": args.weight_decay}
              for lr in (args.learning_rate, args.learning_rate * args.bias_lr_factor, args.vision_tower_lr)]
    build_optimizer(groups, args, optimizer_cls_and_kwargs(args))
