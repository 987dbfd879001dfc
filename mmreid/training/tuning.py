"""``--tower-tuning``: how much of the pretrained image tower a run trains, for any model with a ``vision_tower``.

- ``full``: every tower weight trains, at ``--vision-tower-lr`` (the papers' recipe).
- ``frozen``: the tower's pretrained weights do not train; the heads (everything outside the tower) and the tower's
  new parameters (``vision_tower.new_parameters()``: the camera embedding) do.
- ``lora``: LoRA adapters from ``peft`` on the tower's attention projections train, with the heads and the new
  parameters; the pretrained weights do not.

Why a module of its own: the trainer, ``train.py`` and the benchmarks need one answer to "what trains", and a saved
model must not need ``peft``. :func:`merged_lora_layers` swaps each adapted layer for a plain copy of its base layer
holding ``W + (alpha / r) B A`` while a model is saved, so ``model.safetensors`` has the tower's own keys and loads
with ``AutoModel`` anywhere; the unmerged adapters, which ``--resume`` needs to continue exactly, go into the
checkpoint's :data:`LORA_STATE_FILE`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["ADAPTER_PREFIX", "ATTENTION_PROJECTIONS", "LORA_OPTIONS", "LORA_STATE_FILE", "PEFT_INSTALL",
           "TOWER_TUNING_MODES", "TUNING_CONFIG_KEY", "TowerTuning", "apply_tower_tuning", "check_tuning_options",
           "describe_tuning",
           "is_adapter_parameter", "load_lora_state", "lora_layers", "lora_state_dict", "merged_lora_layers",
           "parameter_counts", "require_lora_state", "require_peft", "resolve_target_modules", "restoring_lora_state", "save_lora_state"]

TOWER_TUNING_MODES = ("full", "frozen", "lora")
# The names image towers give their attention input projections: transformers 5 calls them q_proj / k_proj / v_proj
# in every family (CLIP, MetaCLIP 2, SigLIP 1 and 2, DINOv2 with and without registers, DINOv3, ViT); transformers 4's
# ViT and DINOv2 (and remote-code towers written like them) query / key / value; towers with one fused projection qkv.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "query", "key", "value", "qkv")
# peft's name prefix of the parameters a LoRA layer adds (peft.tuners.lora.LoraModel.prefix).
ADAPTER_PREFIX = "lora_"
# The unmerged adapters (and the base weights under them), relative to the tower, in every checkpoint of a LoRA run.
LORA_STATE_FILE = "tower_lora.safetensors"
# The model config field (config.json) that records how the tower was tuned.
TUNING_CONFIG_KEY = "tower_tuning"
PEFT_INSTALL = 'pip install -e ".[tuning]" (or pip install peft)'
LORA_OPTIONS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules")


@dataclass
class TowerTuning:
    """How much of the image tower trains: the options of ``train.py``'s "tower tuning options" group."""

    tower_tuning: str = field(
        default="full",
        metadata={"help": "What of the pretrained image tower trains: full (every weight, at --vision-tower-lr; the "
                  "papers' recipe), frozen (none: the heads and the camera embedding train), lora (LoRA adapters "
                  "from peft on the tower's attention projections, at --learning-rate; saved models hold the merged "
                  "tower and load without peft). See docs/training.md.", "choices": TOWER_TUNING_MODES},
    )
    lora_rank: int = field(default=8, metadata={"help": "--tower-tuning lora: the adapters' rank r (peft's r)."})
    lora_alpha: float = field(
        default=8.0, metadata={"help": "--tower-tuning lora: peft's lora_alpha; the update B A is scaled by alpha / r."}
    )
    lora_dropout: float = field(
        default=0.0, metadata={"help": "--tower-tuning lora: dropout on the adapters' input (peft's lora_dropout)."}
    )
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "--tower-tuning lora: names of the tower's layers to adapt, matched as peft matches "
                  "target_modules (the whole name or its last parts, e.g. q_proj v_proj), or all-linear. Default: "
                  f"its attention projections, any of {' '.join(ATTENTION_PROJECTIONS)}."},
    )

    def __post_init__(self):
        if self.tower_tuning not in TOWER_TUNING_MODES:
            raise ValueError(f"--tower-tuning must be one of {', '.join(TOWER_TUNING_MODES)}, got {self.tower_tuning!r}")
        if isinstance(self.lora_rank, bool) or int(self.lora_rank) != self.lora_rank or self.lora_rank < 1:
            raise ValueError(f"--lora-rank must be a whole number >= 1, got {self.lora_rank}")
        if not self.lora_alpha > 0:
            raise ValueError(f"--lora-alpha must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_target_modules is not None and not self.lora_target_modules:
            raise ValueError("--lora-target-modules needs at least one layer name")

    @property
    def mode(self) -> str:
        return self.tower_tuning

    def record(self, target_modules: list[str] | str | None = None) -> dict:
        """What config.json, the run record and the model card say: the mode, and for LoRA its settings with the
        target modules resolved."""
        if self.mode != "lora":
            return {"mode": self.mode}
        targets = target_modules if target_modules is not None else self.lora_target_modules
        return {"mode": "lora", "rank": int(self.lora_rank), "alpha": float(self.lora_alpha),
                "dropout": float(self.lora_dropout), "target_modules": targets}


def describe_tuning(record: dict) -> str:
    """One line for the log and the model card, from :meth:`TowerTuning.record`."""
    if record.get("mode") != "lora":
        return {"full": "full (every tower weight trains)",
                "frozen": "frozen (the pretrained tower weights do not train)"}.get(record.get("mode"), str(record))
    targets = record["target_modules"]
    targets = " / ".join(targets) if isinstance(targets, list) else targets
    return (f"LoRA (rank {record['rank']}, alpha {record['alpha']:g}, dropout {record['dropout']:g}) on {targets}; "
            "merged into the tower when saved")


def require_peft(option: str = "--tower-tuning lora") -> None:
    """Refuse, in one line naming what to install, a LoRA run where ``peft`` does not import."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ValueError(f"{option} needs the peft package, which is not installed: {PEFT_INSTALL}") from None


def check_tuning_options(tuning: TowerTuning, given: set[str]) -> None:
    """Refuse, before any work, what the chosen mode does not read: LoRA options without ``--tower-tuning lora``
    (``given``: the options the command line or the recipe file set), and LoRA without peft installed."""
    if tuning.mode != "lora":
        for name in LORA_OPTIONS:
            if name in given:
                raise ValueError(f"--{name.replace('_', '-')} does nothing under --tower-tuning {tuning.mode}: add "
                                 "--tower-tuning lora to train LoRA adapters")
        return
    require_peft()


def _tower(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP-wrapped
    tower = getattr(model, "vision_tower", None)
    if not isinstance(tower, nn.Module):
        raise ValueError("--tower-tuning: the model must expose its image tower as `model.vision_tower` "
                         "(docs/interfaces.md)")
    return tower


def is_adapter_parameter(name: str) -> bool:
    """Whether the parameter named ``name`` is one a LoRA layer added (new, not pretrained)."""
    return any(part.startswith(ADAPTER_PREFIX) for part in name.split("."))


def resolve_target_modules(tower: nn.Module, wanted: list[str] | None = None) -> list[str] | str:
    """The ``target_modules`` for peft: ``wanted`` checked against the tower's layer names (peft's rule: the whole
    name or its last dotted parts), or by default the attention projections the tower has. Raises a one-line
    ValueError when a name matches no layer."""
    names = [name for name, _ in tower.named_modules() if name]
    linear_ends = sorted({name.rsplit(".", 1)[-1] for name, module in tower.named_modules()
                          if isinstance(module, nn.Linear)})
    if wanted is None:
        found = [name for name in ATTENTION_PROJECTIONS if name in linear_ends]
        if not found:
            raise ValueError(f"--tower-tuning lora: the image tower has no attention projection named "
                             f"{', '.join(ATTENTION_PROJECTIONS)}; choose its layers with --lora-target-modules "
                             f"(its Linear layers are named {', '.join(linear_ends)})")
        return found
    if list(wanted) == ["all-linear"]:
        return "all-linear"  # peft's wildcard: every Linear layer
    unmatched = [target for target in wanted
                 if not any(name == target or name.endswith(f".{target}") for name in names)]
    if unmatched:
        raise ValueError(f"--lora-target-modules {' '.join(unmatched)}: no layer of the image tower is named so (its "
                         f"Linear layers are named {', '.join(linear_ends)}; or all-linear)")
    return list(wanted)


def apply_tower_tuning(model: nn.Module, tuning: TowerTuning | str = "full") -> dict:
    """Make the model's image tower train as ``tuning`` says (see the module docstring), in place; everything
    outside the tower is left as it is (a frozen NEXT text tower stays frozen). Records the settings in
    ``model.config`` (:data:`TUNING_CONFIG_KEY`) and returns them with the parameter counts after the change
    (``parameters``, :func:`parameter_counts`) and the names of the tower's parameters that train
    (``tower_trainable``). Raises a one-line ValueError for LoRA targets that match nothing, or without peft.

    E.g. ``apply_tower_tuning(model, "frozen")`` or ``apply_tower_tuning(model, TowerTuning("lora", lora_rank=16))``.
    """
    tuning = TowerTuning(tuning) if isinstance(tuning, str) else tuning
    tower = _tower(model)
    new = list(getattr(tower, "new_parameters", list)())
    targets = None
    if tuning.mode == "frozen":
        tower.requires_grad_(False)
    elif tuning.mode == "lora":
        require_peft()
        from peft import LoraConfig, inject_adapter_in_model

        targets = resolve_target_modules(tower, tuning.lora_target_modules)
        config = LoraConfig(r=int(tuning.lora_rank), lora_alpha=tuning.lora_alpha, lora_dropout=tuning.lora_dropout,
                            target_modules=targets, bias="none")
        try:
            inject_adapter_in_model(config, tower)  # also freezes every tower parameter but the adapters
        except (ValueError, TypeError) as exc:  # a layer type LoRA cannot adapt
            message = " ".join(str(exc).split())
            raise ValueError(f"--lora-target-modules {targets}: peft cannot adapt them ({message[:200]})") from None
        if isinstance(targets, str):
            targets = sorted({name.rsplit(".", 1)[-1] for name in lora_layers(tower)})
    for param in new:  # the camera embedding is no pretrained weight: it trains in every mode
        param.requires_grad_(True)
    record = tuning.record(targets)
    config = getattr(getattr(model, "module", model), "config", None)
    if config is not None:
        setattr(config, TUNING_CONFIG_KEY, record)
    trainable = [name for name, param in tower.named_parameters() if param.requires_grad]
    return {**record, "parameters": parameter_counts(model), "tower_trainable": trainable}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of the model and of its image tower: in all, and those that train (``requires_grad``); each
    tensor counted once (tied weights)."""
    tower_ids = {id(p) for p in _tower(model).parameters()}
    counts = dict.fromkeys(("total", "trainable", "tower", "tower_trainable"), 0)
    seen = set()
    for param in getattr(model, "module", model).parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        in_tower = id(param) in tower_ids
        counts["total"] += param.numel()
        counts["tower"] += param.numel() if in_tower else 0
        if param.requires_grad:
            counts["trainable"] += param.numel()
            counts["tower_trainable"] += param.numel() if in_tower else 0
    return counts


def lora_layers(tower: nn.Module) -> dict[str, nn.Module]:
    """The tower's LoRA layers by name (within the tower); none when peft was never imported."""
    lora = sys.modules.get("peft.tuners.lora")
    if lora is None:  # peft never imported: no adapter can exist (and a full run does not pay for importing it)
        return {}
    return {name: module for name, module in tower.named_modules() if isinstance(module, lora.LoraLayer)}


@contextlib.contextmanager
def merged_lora_layers(model: nn.Module):
    """Within the block, each LoRA layer of the image tower is replaced by a copy of its base layer holding the
    merged weight ``W + (alpha / r) B A``: the model's state dict then has the tower's own keys, with the values a
    model without peft computes the same with. The LoRA layers (whose parameters the optimizer holds) are put back
    afterwards. Nothing happens for a model without adapters."""
    tower = _tower(model)
    swapped = []
    try:
        with torch.no_grad():
            for name, layer in lora_layers(tower).items():
                merged = copy.deepcopy(layer.get_base_layer())
                for adapter in layer.active_adapters:
                    merged.weight.add_(layer.get_delta_weight(adapter))
                parent, _, child = name.rpartition(".")
                owner = tower.get_submodule(parent) if parent else tower
                setattr(owner, child, merged)
                swapped.append((owner, child, layer))
        yield
    finally:
        for owner, child, layer in reversed(swapped):
            setattr(owner, child, layer)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA layers' tensors, unmerged (base weight, bias, A and B), keyed by their name within the tower."""
    return {f"{name}.{key}": value.detach().contiguous()
            for name, layer in lora_layers(_tower(model)).items() for key, value in layer.state_dict().items()}


def save_lora_state(model: nn.Module, folder: str | Path) -> Path | None:
    """Write :func:`lora_state_dict` into ``folder`` as :data:`LORA_STATE_FILE` (nothing without adapters)."""
    from safetensors.torch import save_file

    state = lora_state_dict(model)
    if not state:
        return None
    config = getattr(getattr(model, "module", model), "config", None)
    path = Path(folder) / LORA_STATE_FILE
    save_file(state, str(path), metadata={"format": "pt", TUNING_CONFIG_KEY:
                                          json.dumps(getattr(config, TUNING_CONFIG_KEY, None))})
    return path


def require_lora_state(folder: str | Path, model: nn.Module | None = None) -> Path:
    """``folder``'s :data:`LORA_STATE_FILE`, or a one-line ValueError when it is missing or (given ``model``) its
    tensors are not those of the model's LoRA layers (names read from the file's header)."""
    from safetensors import safe_open

    path = Path(folder) / LORA_STATE_FILE
    if not path.is_file():
        raise ValueError(f"--resume: {folder} has no {LORA_STATE_FILE}, the LoRA adapters a --tower-tuning lora run "
                         "writes into each checkpoint; resume it with the --tower-tuning it was trained with")
    if model is not None:
        with safe_open(str(path), framework="pt") as f:
            held = set(f.keys())
        expected = set(lora_state_dict(model))
        if held != expected:
            absent, extra = sorted(expected - held), sorted(held - expected)
            raise ValueError(f"--resume: the LoRA adapters in {path} do not fit this run's (missing {absent[:3]}, not "
                             f"in this run {extra[:3]}); resume with the --lora-* options it was trained with")
    return path


def load_lora_state(model: nn.Module, folder: str | Path) -> None:
    """Load ``folder``'s :data:`LORA_STATE_FILE` into the tower's LoRA layers; every tensor of them must be in it."""
    from safetensors.torch import load_file

    state = load_file(str(require_lora_state(folder, model)))
    _tower(model).load_state_dict(state, strict=False)


@contextlib.contextmanager
def restoring_lora_state(model: nn.Module, folder: str | Path):
    """For a block that loads a checkpoint's ``model.safetensors`` (merged tower) into ``model``: the merged weights
    go into throwaway plain layers (:func:`merged_lora_layers`), then the LoRA layers come back and take the
    checkpoint's unmerged adapters, exactly as they were saved. Nothing special for a model without adapters."""
    if not lora_layers(_tower(model)):
        yield
        return
    with merged_lora_layers(model):
        yield
    load_lora_state(model, folder)
