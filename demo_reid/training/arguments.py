"""Arguments of ``train.py``: the DeMo recipe on top of ``TrainingArguments``, presets and YAML loading.

Precedence (lowest first): dataclass defaults < ``--preset`` < ``--config FILE.yaml`` < command-line flags.
Every field has a ``help`` string, so ``python train.py --help`` documents every option; flags take both the
``--snake_case`` and ``--kebab-case`` spelling.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from .scheduler import SCHEDULER_TYPES

MODALITY_AUGMENT_MODES = ("independent", "shared")
MODEL_TYPES = ("demo", "next")

__all__ = [
    "PRESETS",
    "DeMoScriptArguments",
    "DeMoTrainingArguments",
    "build_parser",
    "parse_args",
    "resolve_defaults",
]


# The authors always start from OpenAI CLIP ViT-B/16; the real presets load it through from_vision_pretrained.
PRETRAINED_BACKBONE = "openai/clip-vit-base-patch16"
# Towers built from random initialisation, only when asked for by name (shapes only: not the papers' recipe).
RANDOM_BACKBONES = ("tiny", "clip-b16-random", "vit-b16-random")

# The original recipes (DeMo configs). The optimizer / loss / augmentation settings shared by all of them are the
# dataclass defaults below: Adam, lr 3.5e-4 (bias x2), tower 5e-6, wd 1e-4, SIE 1.0, flip 0.5, pad 10, erasing 0.5,
# ID 0.25, triplet 1.0, label smoothing 0.1, soft-margin triplet.
PRESETS: dict[str, dict] = {
    # The embedded default of `python train.py`: tiny CLIP-shaped tower from random init on the synthetic
    # RGBNT201-layout set, under a minute on 2 CPU cores. Everything else is the authors' recipe (PyTorch-default head
    # init, per-modality augmentation, ...); the lr is 2e-3 for every group because nothing is pretrained (1e-3
    # reached mAP 65 in 20 epochs with the authors' init, 2e-3 reaches 91-93: docs/training.md).
    "synthetic": {
        "backbone": "tiny",
        "image_height": 64,
        "image_width": 32,
        "tiny_hidden_size": 96,
        "tiny_num_layers": 3,
        "tiny_patch_size": 8,
        "atmoe_heads": 4,
        "direct_classifier": True,
        "num_identities": 8,
        "num_instances": 4,
        "num_train_epochs": 20,
        "warmup_epochs": 2,
        "learning_rate": 2e-3,
        "vision_tower_lr": 2e-3,
        "padding": 4,
        "output_dir": "outputs/demo-synthetic",
    },
    "rgbnt201": {
        "backbone": PRETRAINED_BACKBONE,
        "tokens_per_expert": 16,  # --model next: 1/8 of the 128 patches, as 4 of 32 on the synthetic set
        "image_height": 256,
        "image_width": 128,
        "num_identities": 8,
        "num_instances": 8,
        "direct_classifier": True,
        "atmoe_heads": 4,
        "num_train_epochs": 50,
        "warmup_epochs": 10,
        "output_dir": "outputs/demo-rgbnt201",
    },
    "rgbnt100": {
        "backbone": PRETRAINED_BACKBONE,
        "tokens_per_expert": 16,  # --model next: 1/8 of the 128 patches, as 4 of 32 on the synthetic set
        "image_height": 128,
        "image_width": 256,
        "num_identities": 8,
        "num_instances": 16,
        "direct_classifier": False,
        "atmoe_heads": 8,
        "num_train_epochs": 30,
        "warmup_epochs": 5,
        "output_dir": "outputs/demo-rgbnt100",
    },
    "msvr310": {
        "backbone": PRETRAINED_BACKBONE,
        "tokens_per_expert": 16,  # --model next: 1/8 of the 128 patches, as 4 of 32 on the synthetic set
        "image_height": 128,
        "image_width": 256,
        "num_identities": 16,
        "num_instances": 4,
        "direct_classifier": False,
        "atmoe_heads": 8,
        "num_train_epochs": 50,
        "warmup_epochs": 10,
        "output_dir": "outputs/demo-msvr310",
    },
}


@dataclass
class DeMoScriptArguments:
    """What to train on and which model to build (everything that is not a Trainer setting)."""

    config: str | None = field(default=None, metadata={"help": "YAML file of option: value pairs (any option below)."})
    model: str = field(
        default="demo",
        metadata={"help": "Which model to train: demo (DeMo, AAAI 2025) or next (NEXT: text-modulated multi-grained "
                  "experts; reads the dataset's captions).", "choices": MODEL_TYPES},
    )
    preset: str = field(
        default="synthetic",
        metadata={
            "help": "Recipe to start from: synthetic (the CPU demo), rgbnt201, rgbnt100 or msvr310.",
            "choices": sorted(PRESETS),
        },
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "Path of a DatasetDict saved with save_to_disk (train/query/gallery). "
                  "Default: build the synthetic RGBNT201-layout set under --synthetic-dir."},
    )
    synthetic_dir: str = field(
        default="outputs/synthetic-rgbnt201", metadata={"help": "Where the synthetic dataset is built / reused."}
    )
    backbone: str = field(
        default=PRETRAINED_BACKBONE,
        metadata={"help": f"A CLIP or ViT checkpoint (Hub id or local directory) loaded with "
                  f"DeMoModel.from_vision_pretrained; the real presets use {PRETRAINED_BACKBONE}. Random "
                  f"initialisation only by name: {', '.join(RANDOM_BACKBONES)} (tiny: the synthetic preset's)."},
    )
    image_height: int = field(default=256, metadata={"help": "Input height of every modality image."})
    image_width: int = field(default=128, metadata={"help": "Input width of every modality image."})
    tiny_hidden_size: int = field(default=96, metadata={"help": "--backbone tiny: transformer width."})
    tiny_num_layers: int = field(default=3, metadata={"help": "--backbone tiny: number of transformer layers."})
    tiny_patch_size: int = field(default=8, metadata={"help": "--backbone tiny: patch size."})
    atmoe_heads: int = field(default=4, metadata={"help": "ATMoE gating heads."})
    direct_classifier: bool = field(
        default=True, metadata={"help": "One classifier on concat(f_R, f_N, f_T) instead of one per modality."}
    )
    sie_coefficient: float = field(default=1.0, metadata={"help": "Scale of the camera (SIE) embedding."})
    hdm_dropout: float = field(
        default=0.1,
        metadata={"help": "Attention dropout of the HDM cross-attentions; the one per-process randomness left "
                  "(0 makes 1 and N processes compute the same training run)."},
    )
    num_semantic_experts: int = field(default=3, metadata={"help": "--model next: TMSE experts (N_s)."})
    num_structure_experts: int = field(default=3, metadata={"help": "--model next: CSSE experts (N_c)."})
    tokens_per_expert: int = field(
        default=4,
        metadata={"help": "--model next: patches each semantic expert selects per modality (k); 1/8 of the patches "
                  "by default (4 of 32 on the synthetic set, 16 of 128 in the real presets)."},
    )
    caption_sentences_per_expert: int = field(
        default=2, metadata={"help": "--model next: caption sentences each semantic expert sees in training."}
    )
    use_tmse: bool = field(default=True, metadata={"help": "--model next: the text-modulated semantic experts."})
    use_csse: bool = field(default=True, metadata={"help": "--model next: the context-shared structure experts."})
    use_text: bool = field(
        default=True, metadata={"help": "--model next: read the captions (False: every expert uses its no-text embedding)."}
    )
    head_init: str = field(
        default="pytorch",
        metadata={"help": "Initialisation of the new head layers: pytorch (PyTorch defaults, the original) or "
                  "normal (normal(0, 0.02) weights, zero biases).", "choices": ("pytorch", "normal")},
    )
    id_loss_weight: float = field(default=0.25, metadata={"help": "Weight of the label-smoothed ID loss."})
    triplet_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the triplet loss."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing of the ID loss."})
    triplet_margin: float | None = field(
        default=None, metadata={"help": "Triplet margin; unset = soft-margin triplet (softplus)."}
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Continue from the last complete checkpoint in --output-dir (incomplete ones are skipped)."},
    )
    profile: bool = field(
        default=False,
        metadata={"help": "Record a few optimizer steps with torch.profiler into <output-dir>/profile (a trace for "
                  "Perfetto / chrome://tracing and an operator summary); see docs/benchmarks.md."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an --output-dir that already holds a model or checkpoints (its old "
                  "checkpoints are deleted first); without it or --resume, train.py refuses."},
    )
    select_best_on_test: bool = field(
        default=False,
        metadata={"help": "Keep the epoch with the best *test* (query/gallery) mAP. Optimistic; labelled in the "
                  "output. Default: report the final epoch."},
    )


@dataclass
class DeMoTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with the DeMo recipe as defaults plus P x K sampling, lr groups and augmentation."""

    output_dir: str | None = field(default=None, metadata={"help": "Where checkpoints and the final model go."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "Continue from this checkpoint folder (a checkpoint-N written by train.py)."}
    )
    num_identities: int = field(
        default=8, metadata={"help": "P: identities per global batch (split over the processes; a multiple of them)."}
    )
    num_instances: int = field(default=8, metadata={"help": "K: images per identity in a batch."})
    learning_rate: float = field(default=3.5e-4, metadata={"help": "Lr of the new (non-tower) modules' weights."})
    bias_lr_factor: float = field(default=2.0, metadata={"help": "Bias lr = learning_rate x this (outside the tower)."})
    vision_tower_lr: float = field(default=5e-6, metadata={"help": "Lr of every vision-tower parameter (biases too)."})
    weight_decay: float = field(default=1e-4, metadata={"help": "Weight decay of every group (L2, as Adam's)."})
    lr_scheduler_type: str = field(
        default="demo_cosine",
        metadata={"help": "demo_cosine (the original: per-epoch cosine, warm-up, seeded noise), demo_cosine_plain "
                  "(no noise), or any transformers scheduler name (stepped per optimizer step)."},
    )
    warmup_epochs: int = field(default=10, metadata={"help": "demo_cosine: linear warm-up epochs."})
    warmup_factor: float = field(default=0.1, metadata={"help": "demo_cosine: warm-up starts at this x learning_rate."})
    min_lr_factor: float = field(default=0.001, metadata={"help": "demo_cosine: floor lr = this x learning_rate."})
    lr_noise_seed: int = field(default=42, metadata={"help": "demo_cosine: seed of the multiplicative lr noise."})
    flip_prob: float = field(default=0.5, metadata={"help": "Horizontal flip probability."})
    padding: int = field(default=10, metadata={"help": "Black padding before the random crop (pixels)."})
    erasing_prob: float = field(default=0.5, metadata={"help": "Random erasing probability (per-pixel noise)."})
    modality_augment: str = field(
        default="independent",
        metadata={"help": "independent: each modality image draws its own flip / crop / erasing (the original); "
                  "shared: the aligned RGB / NIR / TIR images of a triple share one draw.",
                  "choices": MODALITY_AUGMENT_MODES},
    )
    deterministic: bool = field(
        default=False, metadata={"help": "Deterministic kernels (torch.use_deterministic_algorithms, cuDNN, cuBLAS)."}
    )
    num_train_epochs: float = field(default=50, metadata={"help": "Training epochs."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping; 0 = off (the original)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    save_strategy: SaveStrategy | str = field(
        default="epoch", metadata={"help": "When to write checkpoints: no | epoch | steps."}
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    eval_strategy: IntervalStrategy | str = field(
        default="no", metadata={"help": "Periodic query/gallery evaluation: no | epoch | steps."}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loader worker processes."})

    def __post_init__(self):
        if self.lr_scheduler_type in SCHEDULER_TYPES:
            custom = self.lr_scheduler_type
            self.lr_scheduler_type = "constant"  # validated by the parent, replaced below
        else:
            custom = None
        if self.output_dir is None:
            self.output_dir = PRESETS["synthetic"]["output_dir"]
        if self.deterministic:
            self.full_determinism = True
        # Multi-process on a machine without a GPU (torchrun / accelerate with use_cpu): run DDP on CPU with gloo
        # instead of silently training one independent process per rank.
        cpu_launch = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        if cpu_launch or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()):
            self.use_cpu = True
        super().__post_init__()
        if custom is not None:
            self.lr_scheduler_type = custom
        for name in ("num_identities", "num_instances", "warmup_epochs"):
            if getattr(self, name) < (0 if name == "warmup_epochs" else 1):
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)}")
        if self.num_identities < 2:
            raise ValueError(f"`num_identities` (P) must be >= 2 for batch-hard mining, got {self.num_identities}")
        for name in ("flip_prob", "erasing_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}")
        if self.num_identities % self.world_size:
            raise ValueError(
                f"--num-identities {self.num_identities} (P, identities per global batch) cannot be split over "
                f"{self.world_size} processes: use a multiple of {self.world_size}"
            )
        # The batch sampler decides the batch (P / N identities x K images per process); the columns the collator
        # needs are chosen by the trainer. Keep the Trainer's bookkeeping consistent with both.
        self.per_device_train_batch_size = self.num_identities // self.world_size * self.num_instances
        self.remove_unused_columns = False

    @property
    def uses_demo_schedule(self) -> bool:
        return self.lr_scheduler_type in SCHEDULER_TYPES


USAGE_EXAMPLES = """\
Train DeMo for multi-modal (RGB / NIR / TIR) object re-identification.

examples:
  python train.py                                   # CPU demo: synthetic RGBNT201-layout set, tiny model
  accelerate launch train.py --preset rgbnt201 --dataset data/rgbnt201 --output-dir outputs/demo-rgbnt201
  accelerate launch train.py --preset msvr310 --dataset data/msvr310 --backbone /models/clip-vit-base-patch16
  python train.py --preset rgbnt201 --dataset data/rgbnt201 --resume      # continue a stopped run
  torchrun --nproc_per_node 2 train.py --output-dir outputs/demo-2proc    # 2 CPU processes, same math as 1

Options come from --preset, then --config FILE.yaml, then flags (highest). P x K is the global batch.
"""

# The options a ReID user sets, shown first in --help; every other option follows under "Trainer options".
MAIN_OPTIONS = (
    "preset", "config", "model", "dataset", "backbone", "output_dir", "num_train_epochs", "num_identities", "num_instances",
    "learning_rate", "vision_tower_lr", "resume", "resume_from_checkpoint", "overwrite_output_dir", "seed",
)
# TrainingArguments fields that do nothing in this trainer: hidden from --help and refused when given.
IGNORED_TRAINER_OPTIONS = {
    "per_device_train_batch_size": "the batch is P x K: set --num-identities and --num-instances",
    "remove_unused_columns": "the trainer passes the collator exactly the columns the model needs",
    "gather_features": "triplets are always mined over the global batch of all processes",
}
IGNORED_UNDER_DEMO_SCHEDULES = {
    "warmup_steps": "the demo_cosine schedules warm up per epoch: set --warmup-epochs",
}


def build_parser() -> HfArgumentParser:
    """The parser of train.py: usage examples, the ReID options, then the other Trainer options."""
    parser = HfArgumentParser(
        (DeMoScriptArguments, DeMoTrainingArguments),
        prog="train.py",
        usage="%(prog)s [--preset NAME] [--dataset PATH] [--backbone NAME_OR_PATH] [--output-dir DIR] [options]",
        description=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    main = parser.add_argument_group("ReID options")
    recipe = parser.add_argument_group("model and recipe options")
    trainer = parser.add_argument_group("Trainer options (transformers.TrainingArguments)")
    script_fields = {f.name for f in fields(DeMoScriptArguments)}
    own_fields = {f.name for f in fields(DeMoTrainingArguments)} - {f.name for f in fields(TrainingArguments)}
    own_fields |= {"num_train_epochs", "learning_rate", "weight_decay", "lr_scheduler_type", "max_grad_norm"}
    default_group = parser._optionals
    for action in list(default_group._group_actions):
        if action.dest == "help":
            continue
        if action.dest in IGNORED_TRAINER_OPTIONS or action.dest in IGNORED_UNDER_DEMO_SCHEDULES:
            action.help = argparse.SUPPRESS
        target = main if action.dest in MAIN_OPTIONS else recipe if action.dest in script_fields | own_fields else trainer
        default_group._group_actions.remove(action)
        target._group_actions.append(action)
    order = {name: i for i, name in enumerate(MAIN_OPTIONS)}
    main._group_actions.sort(key=lambda a: order.get(a.dest, len(order)))
    parser.error = _raise_usage_error  # one line from the caller, not argparse's usage dump + exit
    return parser


def _raise_usage_error(message: str):
    raise ValueError(message)


# Options that only one model reads; given explicitly with the other model they would do nothing.
MODEL_OPTIONS = {
    "demo": ("atmoe_heads", "direct_classifier", "hdm_dropout"),
    "next": ("num_semantic_experts", "num_structure_experts", "tokens_per_expert", "caption_sentences_per_expert",
             "use_tmse", "use_csse", "use_text"),
}


def _given_options(argv: list[str], config: dict) -> set[str]:
    """Option names set explicitly, as flags (either spelling, `--no-x` counted as `x`) or in the YAML file."""
    given = {a.split("=", 1)[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")} | set(config)
    return given | {name[3:] for name in given if name.startswith("no_")}


def refuse_other_model_options(argv: list[str], config: dict, model: str) -> None:
    given = _given_options(argv, config)
    for other, names in MODEL_OPTIONS.items():
        if other != model:
            for name in names:
                if name in given:
                    raise ValueError(f"--{name.replace('_', '-')} is a --model {other} option; it does nothing with "
                                     f"--model {model}")


def refuse_ignored_options(argv: list[str], config: dict, scheduler_type: str) -> None:
    """One clear error for a Trainer option that would do nothing here (given as a flag or in the YAML file)."""
    refused = dict(IGNORED_TRAINER_OPTIONS)
    if scheduler_type in SCHEDULER_TYPES:
        refused.update(IGNORED_UNDER_DEMO_SCHEDULES)
    given = _given_options(argv, config)
    for name, why in refused.items():
        if name in given:
            raise ValueError(f"--{name.replace('_', '-')} does nothing in train.py: {why}")


def _field_names() -> set[str]:
    return {f.name for cls in (DeMoScriptArguments, DeMoTrainingArguments) for f in fields(cls)}


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config; keys may use ``-`` or ``_``; unknown keys are an error naming them."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config: no such file {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of option: value, got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - _field_names())
    if unknown:
        raise ValueError(f"--config {path}: unknown options {unknown}; see `python train.py --help`")
    return data


def resolve_defaults(argv: list[str]) -> dict:
    """Defaults for the full parser from ``--preset`` and ``--config`` found in ``argv``."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--model", default=None)
    known, _ = pre.parse_known_args(argv)
    config = load_yaml(known.config) if known.config else {}
    preset = known.preset or config.get("preset") or "synthetic"
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {preset!r}")
    defaults = {"preset": preset, **PRESETS[preset]}
    if (known.model or config.get("model")) == "next":  # each model its own default output directory
        defaults["output_dir"] = defaults["output_dir"].replace("demo-", "next-")
    defaults.update(config)
    return defaults


def check_report_to(report_to: list[str]) -> None:
    """Refuse, before anything is written, a ``--report-to`` integration the Trainer would only reject once the
    dataset and model are built (with a traceback): an unknown name, or tensorboard without its package."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK, is_tensorboard_available

    for name in report_to:
        if name not in INTEGRATION_TO_CALLBACK:
            raise ValueError(f"--report-to {name}: unknown integration; use none, all or one of "
                             f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
    if "tensorboard" in report_to and not is_tensorboard_available():
        raise ValueError("--report-to tensorboard: the tensorboard package is not installed; pip install tensorboard")


def parse_args(argv: list[str] | None = None) -> tuple[DeMoScriptArguments, DeMoTrainingArguments]:
    """Parse flags on top of preset and YAML defaults."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    defaults = resolve_defaults(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--lr_scheduler_type", "--lr-scheduler-type", default=defaults.get("lr_scheduler_type", "demo_cosine"))
    refuse_ignored_options(argv, defaults, pre.parse_known_args(argv)[0].lr_scheduler_type)
    parser.set_defaults(**defaults)
    try:
        script_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as exc:
        if "not used by the HfArgumentParser" in str(exc):
            unknown = str(exc).split(":", 1)[1].strip()
            raise ValueError(f"unknown option(s) {unknown}; see python train.py --help") from None
        raise
    if script_args.image_height <= 0 or script_args.image_width <= 0:
        raise ValueError(
            f"--image-height/--image-width must be positive, got {script_args.image_height}x{script_args.image_width}"
        )
    if script_args.select_best_on_test:
        if training_args.eval_strategy == "no":
            raise ValueError("--select-best-on-test needs periodic evaluation: pass --eval-strategy epoch")
        if training_args.save_strategy != training_args.eval_strategy:
            raise ValueError("--select-best-on-test: --save-strategy must equal --eval-strategy")
    check_report_to(training_args.report_to)
    refuse_other_model_options(argv, load_yaml(script_args.config) if script_args.config else {}, script_args.model)
    if not 0.0 <= script_args.hdm_dropout < 1.0:
        raise ValueError(f"--hdm-dropout must be in [0, 1), got {script_args.hdm_dropout}")
    if not math.isfinite(training_args.learning_rate) or training_args.learning_rate <= 0:
        raise ValueError(f"--learning-rate must be > 0, got {training_args.learning_rate}")
    return script_args, training_args
