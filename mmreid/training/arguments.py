"""Arguments of ``train.py``: what to train, the Trainer's arguments with the ReID recipe, and the model, loss and
augmentation options, each defined once where it is used.

- :class:`ReIDArguments`: what to train on and which model to build.
- :class:`ReIDTrainingArguments`: ``transformers.TrainingArguments`` with the P x K batch, the learning-rate groups
  and the per-epoch schedule of the authors' recipe as defaults.
- Model options come from the config classes (:class:`configuration_reid.ReIDConfig` and each registered model's,
  :mod:`mmreid.models`), loss options from :class:`~mmreid.training.losses.ReIDLoss`, augmentation options
  from :class:`~mmreid.data.augment.ReIDAugment` (see :mod:`mmreid.training.options`).

Precedence (lowest first): defaults in code < the recipe file (``--preset NAME`` = ``configs/NAME.yaml``, or the
file given with ``--config``) < command-line flags. A recipe file holds ``option: value`` pairs; a section named
after a model (``demo:``, ``next:``, or a remote model's ``model_type``) holds options applied only to that model.
Flags take both the ``--snake_case`` and the ``--kebab-case`` spelling.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy
from transformers.training_args import OptimizerNames

from ..data.augment import ReIDAugment
from ..errors import UsageError
from ..evaluation.metrics import METRIC_KEYS
from ..hub.model_card import BEST_ON_TEST, FINAL_EPOCH, best_on_test_label
from ..output_paths import check_output_dir
from ..hub.backbones import PRETRAINED_BACKBONE
from ..hub.factory import RUN_FIELDS
from ..models import BUILTIN_MODELS, FAMILY_OPTIONS_GROUP
from ..data.missing import FILL_HELP, FILL_MODES
from .losses import ReIDLoss
from .optimizers import AUTHORS_OPTIMIZER, check_optimizer_options
from .options import option_parameters, options_dataclass
from .preemption import CHECKPOINT_SIGNALS
from .scheduler import EPOCH_SCHEDULES
from .tuning import TowerTuning, check_tuning_options

__all__ = ["PRESETS_DIR", "REFUSED_TRAINER_OPTIONS", "ReIDArguments", "ReIDTrainingArguments",
           "TrainRun", "build_parser", "parse_args"]

# The recipe files behind --preset: one per dataset, as the authors ship them; read, copy and edit them.
PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_PRESET = "synthetic"
DEFAULT_MODEL = "demo"
OPTIMIZER_CHOICES = (AUTHORS_OPTIMIZER, *(name.value for name in OptimizerNames))


@dataclass
class ReIDArguments:
    """What to train on and which model to build (everything that is not a Trainer, model, loss or augmentation
    option)."""

    preset: str | None = field(
        default=None,
        metadata={"help": f"Recipe file to start from: a name of {PRESETS_DIR.name}/ (synthetic, the CPU demo and the "
                  "default; rgbnt201, rgbnt100, msvr310: the authors' recipes; wmveid863: ours, from msvr310's)."},
    )
    config: str | None = field(
        default=None,
        metadata={"help": "A recipe YAML file of option: value pairs (e.g. an edited copy of a preset); it replaces "
                  "the default preset unless it names one with `preset:` or --preset is given."},
    )
    model: str | None = field(
        default=None,
        metadata={"help": f"The model: {' or '.join(BUILTIN_MODELS)} (default {DEFAULT_MODEL}), or a directory / Hub "
                  "id holding a config.json with an auto_map (remote code) for any model that honours "
                  "docs/interfaces.md."},
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "A DatasetDict (train/query/gallery): a folder saved with save_to_disk, or a Hub dataset id "
                  "(build_dataset.py --push-to-hub). Default: build the synthetic RGBNT201-layout set under "
                  "--synthetic-dir."},
    )
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Branch, tag or commit of a Hub --dataset (default: its main branch)."}
    )
    synthetic_dir: str = field(
        default="outputs/synthetic-rgbnt201", metadata={"help": "Where the synthetic dataset is built / reused."}
    )
    fill_missing_modalities: str = field(default="none", metadata={"help": FILL_HELP, "choices": FILL_MODES})
    backbone: str = field(
        default=PRETRAINED_BACKBONE,
        metadata={"help": "The pretrained tower(s): a CLIP, MetaCLIP 2, SigLIP, SigLIP 2, DINOv2 (with or without "
                  "registers), DINOv3 ViT or ViT checkpoint (Hub id or local directory; a dual image-text checkpoint "
                  "gives its image half, and NEXT its text half too), loaded with the model's from_pretrained_towers; "
                  "random initialisation only by name: tiny (the synthetic preset's), clip-b16-random, "
                  "vit-b16-random, dinov3-vitb16-random. See docs/towers.md."},
    )
    text_backbone: str | None = field(
        default=None,
        metadata={"help": "The text tower of a model that reads captions (NEXT) when --backbone has none (DINOv2, "
                  "DINOv3, ViT, an image-only tower): a CLIP, MetaCLIP 2, SigLIP or SigLIP 2 checkpoint with its "
                  "tokenizer; a learned text_bridge then maps its sentence embedding to the image features."},
    )
    image_size: list[int] | None = field(
        default=None,
        metadata={"help": "Input height and width of every modality image, e.g. --image-size 256 128 (default: the "
                  "model config's)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Model config fields as key=value pairs separated by commas, for fields without an option "
                  "of their own; a dotted key reaches a sub-config (vision_config.hidden_size=32)."},
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Continue from the last complete checkpoint in --output-dir (incomplete ones are skipped); "
                  "with --hub-model-id and none there, from the repo's last-checkpoint/ (downloaded first)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an --output-dir that already holds a model or checkpoints (its old "
                  "checkpoints are deleted, and listed, once the new run has passed every check, just before it "
                  "trains); without it or --resume, train.py refuses."},
    )
    profile: bool = field(
        default=False,
        metadata={"help": "Record a few optimizer steps with torch.profiler into <output-dir>/profile (a trace for "
                  "Perfetto / chrome://tracing and an operator summary); see docs/benchmarks.md."},
    )
    checkpoint_on_signal: list[str] = field(
        default_factory=lambda: ["SIGTERM"],
        metadata={"help": "Signals that make training finish the current optimizer step, write a complete checkpoint "
                  f"and exit with status 128 + the signal number (143 for SIGTERM): any of {', '.join(CHECKPOINT_SIGNALS)}"
                  " (SLURM sends SIGTERM before preemption; add SIGUSR1 for sbatch --signal=USR1@90); "
                  "--resume continues from that step. See docs/training.md."},
    )


@dataclass
class ReIDTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with the DeMo recipe as defaults, plus P x K sampling, lr groups and the per-epoch
    schedule."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Where checkpoints and the final model go (default: outputs/<model>-<preset>)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "Continue from this checkpoint folder (a checkpoint-N written by train.py)."}
    )
    num_identities: int = field(
        default=8, metadata={"help": "P: identities per global batch (split over the processes; a multiple of them)."}
    )
    num_instances: int = field(default=8, metadata={"help": "K: images per identity in a batch."})
    learning_rate: float = field(default=3.5e-4, metadata={"help": "Lr of the new (non-tower) modules' weights."})
    bias_lr_factor: float = field(default=2.0, metadata={"help": "Bias lr = learning_rate x this (outside the tower)."})
    vision_tower_lr: float = field(
        default=5e-6, metadata={"help": "Lr of the pretrained vision-tower parameters (biases too)."}
    )
    weight_decay: float = field(default=1e-4, metadata={"help": "Weight decay of every group (L2, as Adam's)."})
    optim: str = field(
        default=AUTHORS_OPTIMIZER,
        metadata={"help": f"The optimizer over the three parameter groups: {AUTHORS_OPTIMIZER} (torch.optim.Adam, L2 "
                  "weight decay: the authors' recipe) or a name of the Trainer's (adamw_torch, sgd, adagrad, rmsprop, "
                  "...); options of its own go in --optim-args key=value,...", "choices": OPTIMIZER_CHOICES},
    )
    lr_schedule: str = field(
        default="demo_cosine",
        metadata={"help": "demo_cosine (the original: per-epoch cosine with warm-up and seeded noise), "
                  "demo_cosine_plain (no noise), or trainer (the Trainer's --lr-scheduler-type, stepped per "
                  "optimizer step).", "choices": (*EPOCH_SCHEDULES, "trainer")},
    )
    warmup_epochs: int = field(default=10, metadata={"help": "demo_cosine*: linear warm-up epochs."})
    warmup_factor: float = field(default=0.1, metadata={"help": "demo_cosine*: warm-up starts at this x learning_rate."})
    min_lr_factor: float = field(default=0.001, metadata={"help": "demo_cosine*: floor lr = this x learning_rate."})
    lr_noise_seed: int = field(default=42, metadata={"help": "demo_cosine: seed of the multiplicative lr noise."})
    select_best_on_test: bool = field(
        default=False,
        metadata={"help": "Keep the epoch with the best *test* (query/gallery) mAP. Optimistic; labelled in the "
                  "output. Default: report the final epoch. Needs --eval-strategy = --save-strategy."},
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
        if self.deterministic:
            self.full_determinism = True
        # Multi-process on a machine without a GPU (torchrun / accelerate with use_cpu): run DDP on CPU with gloo
        # instead of silently training one independent process per rank.
        cpu_launch = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        if cpu_launch or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()):
            self.use_cpu = True
        if self.select_best_on_test:
            self.load_best_model_at_end = True
            self.metric_for_best_model = "mAP"
            self.greater_is_better = True
        self._check_best_model_selection()
        # The Trainer's own checks know its optimizer names only: the authors' Adam passes them as AdamW, then is
        # recorded (training_args.json) and built (ReIDTrainer.get_optimizer_cls_and_kwargs) as what it is.
        optim = self.optim
        if optim == AUTHORS_OPTIMIZER:
            self.optim = OptimizerNames.ADAMW_TORCH
        super().__post_init__()
        if optim == AUTHORS_OPTIMIZER:
            self.optim = AUTHORS_OPTIMIZER
        if self.lr_schedule in EPOCH_SCHEDULES:
            # Values other than the Trainer's defaults (a recipe file, a script); parse_args refuses any typed flag.
            for name in ("warmup_steps", "lr_scheduler_kwargs"):
                if getattr(self, name):
                    raise ValueError(trainer_schedule_refusal(name, self.lr_schedule))
            if self.lr_scheduler_type != "linear":
                raise ValueError(trainer_schedule_refusal("lr_scheduler_type", self.lr_schedule))
        if self.fp16 and (self.use_cpu or not torch.cuda.is_available()):
            # Accelerate would train in float32 without a word: fp16 autocast + gradient scaling is a CUDA mode here.
            raise ValueError("--fp16 needs a CUDA GPU (float16 autocast with a gradient scaler); on CPU use --bf16")
        if self.num_identities < 2:
            raise ValueError(f"--num-identities (P) must be >= 2 for batch-hard mining, got {self.num_identities}")
        if self.num_instances < 2:
            raise ValueError(f"--num-instances (K) must be >= 2: batch-hard triplet mining needs two images of an "
                             f"identity in a batch for a positive pair, got {self.num_instances}")
        if self.warmup_epochs < 0:
            raise ValueError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if self.num_identities % self.world_size:
            raise ValueError(
                f"--num-identities {self.num_identities} (P, identities per global batch) cannot be split over "
                f"{self.world_size} processes: use a multiple of {self.world_size}"
            )
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}")
        for name in ("vision_tower_lr", "weight_decay", "bias_lr_factor", "warmup_factor", "min_lr_factor"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.max_steps <= 0 and not (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0):
            raise ValueError(f"--num-train-epochs must be > 0 (or give --max-steps), got {self.num_train_epochs}")
        # The batch sampler decides the batch (P / N identities x K images per process) and the collator the
        # columns: keep the Trainer's bookkeeping consistent with both.
        self.per_device_train_batch_size = self.num_identities // self.world_size * self.num_instances
        self.remove_unused_columns = False

    def _check_best_model_selection(self) -> None:
        """--load-best-model-at-end (and --select-best-on-test, which sets it) in one line each, before the Trainer's
        own checks (whose message spans several lines): the metric is one evaluation gives, and the best checkpoint
        is one that was saved."""
        if not self.load_best_model_at_end:
            return
        flag = "--select-best-on-test" if self.select_best_on_test else "--load-best-model-at-end"
        eval_strategy = IntervalStrategy(self.eval_strategy).value
        save_strategy = SaveStrategy(self.save_strategy).value
        if eval_strategy == "no":
            raise ValueError(f"{flag} needs periodic evaluation: pass --eval-strategy epoch (or steps) and the same "
                             "--save-strategy")
        metric = (self.metric_for_best_model or "").removeprefix("eval_")
        if metric not in METRIC_KEYS:
            raise ValueError(f"{flag}: --metric-for-best-model must be one of {', '.join(METRIC_KEYS)} (what the "
                             f"query/gallery evaluation gives), got {self.metric_for_best_model!r}")
        if save_strategy not in (eval_strategy, "best"):
            raise ValueError(f"{flag}: --save-strategy {save_strategy} must equal --eval-strategy {eval_strategy}, so "
                             "that the best evaluated step is a saved checkpoint")

    @property
    def selection(self) -> str:
        """How the reported model was chosen, as final_metrics.json, the model card and the log say it: the last
        step, or the checkpoint with the best metric on the evaluation split, which is the query / gallery (test)
        split (optimistic)."""
        if not self.load_best_model_at_end:
            return FINAL_EPOCH
        metric = (self.metric_for_best_model or "").removeprefix("eval_")
        if metric == "mAP" and IntervalStrategy(self.eval_strategy) == IntervalStrategy.EPOCH:
            return BEST_ON_TEST
        return best_on_test_label(metric)


def trainer_schedule_refusal(name: str, lr_schedule: str) -> str:
    """The one line refusing a Trainer schedule option under a per-epoch --lr-schedule."""
    flag = f"--{name.replace('_', '-')}"
    instead = " (it warms up per epoch: set --warmup-epochs)" if name.startswith("warmup") else ""
    return f"{flag} does nothing under --lr-schedule {lr_schedule}{instead}: add --lr-schedule trainer to use it"


# Trainer options that cannot act in train.py: not offered, and refused in one line naming what to use instead when
# given (on the command line or in a recipe file). Every other TrainingArguments field acts, and a test shows it
# (tests/test_trainer_options.py walks every field: a new Trainer field fails it until it is put in one or the other).
_PREDICTION_LOOP = "evaluation is the query/gallery retrieval protocol, not the Trainer's prediction loop"
_NOT_DDP = "train.py trains with DDP (accelerate launch / torchrun; docs/training.md)"
REFUSED_TRAINER_OPTIONS = {
    "per_device_train_batch_size": "the batch is P x K: set --num-identities and --num-instances",
    "auto_find_batch_size": "the batch is P x K: set --num-identities and --num-instances",
    "train_sampling_strategy": "batches are P identities x K images: set --num-identities and --num-instances",
    "length_column_name": "batches are P identities x K images: set --num-identities and --num-instances",
    "dataloader_drop_last": "every batch is a complete P x K batch: set --num-identities and --num-instances",
    "remove_unused_columns": "the trainer passes the collator exactly the columns the model needs",
    "label_names": "the labels are the dataset's `label` column, read by the collator",
    "label_smoothing_factor": "the ID loss smooths its own labels: use --label-smoothing",
    "average_tokens_across_devices": "the loss is the mean over the global P x K batch, the same for any process count",
    "include_num_input_tokens_seen": "images are not tokens: the log counts optimizer steps and epochs",
    "neftune_noise_alpha": "it perturbs a language model's input embeddings; augmentation options are under --help",
    "use_liger_kernel": "Liger kernels are for language models; --torch-compile fuses this model's kernels",
    "liger_kernel_config": "Liger kernels are for language models; --torch-compile fuses this model's kernels",
    "use_cache": "it is a generation cache; these models generate nothing",
    "optim_target_modules": "GaLore / APOLLO replace the three parameter groups: choose another --optim",
    "bf16_full_eval": "evaluation runs the model in the training precision (--bf16 autocast)",
    "fp16_full_eval": "evaluation runs the model in the training precision (--fp16 autocast)",
    "prediction_loss_only": _PREDICTION_LOOP,
    "eval_do_concat_batches": _PREDICTION_LOOP,
    "eval_use_gather_object": _PREDICTION_LOOP,
    "eval_accumulation_steps": _PREDICTION_LOOP,
    "include_for_metrics": _PREDICTION_LOOP,
    "batch_eval_metrics": _PREDICTION_LOOP,
    "do_train": "train.py always trains, then evaluates; eval.py evaluates a saved model",
    "do_eval": "train.py evaluates at the end (and with --eval-strategy during training); eval.py evaluates a model",
    "do_predict": "train.py always trains, then evaluates; eval.py evaluates a saved model",
    "greater_is_better": "every metric of --metric-for-best-model (mAP, Rank-k, mINP) is better when greater",
    "full_determinism": "use --deterministic (it also makes the attention kernels deterministic)",
    "enable_jit_checkpoint": "use --checkpoint-on-signal (SIGTERM by default: a complete checkpoint, then exit)",
    "ignore_data_skip": "--resume replays the batch stream of the stopped run, so it ends bit-identical",
    "restore_callback_states_from_checkpoint": "no callback of train.py keeps state across a resume",
    "accelerator_config": "the P x K loader shards itself and is not passed through accelerate",
    "dataloader_in_order": "the P x K loader yields its batches in sampler order",
    "parallelism_config": _NOT_DDP,
    "ddp_backend": "the process group is the launcher's: gloo on CPU processes, nccl on GPUs",
    "ddp_timeout": "the process group is the launcher's, with torch.distributed's timeout",
    "hub_revision": "pushes and --resume use the repo's main branch: give each run its own --hub-model-id",
    "run_name": "it names runs in W&B / MLflow / Trackio, which this project does not install: TensorBoard writes "
                "under <output-dir>/runs",
    "fsdp": _NOT_DDP,
    "fsdp_config": _NOT_DDP,
    "deepspeed": _NOT_DDP,
    "gradient_checkpointing": "the Trainer's deprecated alias: use --activation-checkpointing",
    "gradient_checkpointing_kwargs": "--activation-checkpointing checkpoints every tower layer; it takes no options",
    "activation_checkpointing_kwargs": "--activation-checkpointing checkpoints every tower layer; it takes no options",
    "debug": "use --deterministic and the logged loss components; see docs/training.md",
    "log_on_each_node": "train.py logs from the main process only",
    "log_level_replica": "train.py logs from the main process only",
    "save_on_each_node": "checkpoints are written by the main process (to a file system all nodes share)",
    "project": "Trackio is not installed here: --report-to tensorboard",
    "trackio_space_id": "Trackio is not installed here: --report-to tensorboard",
    "trackio_bucket_id": "Trackio is not installed here: --report-to tensorboard",
    "trackio_static_space_id": "Trackio is not installed here: --report-to tensorboard",
    "torch_compile_backend": "--torch-compile compiles with inductor (fallback_random keeps eager's dropout masks)",
    "torch_compile_mode": "--torch-compile compiles with inductor's default mode",
}
# --help: the options a ReID user sets first, then the rest of the recipe, then the generated groups, then the
# Trainer's own options.
MAIN_OPTIONS = ("preset", "config", "model", "dataset", "backbone", "text_backbone", "output_dir", "num_train_epochs",
                "num_identities", "num_instances", "learning_rate", "vision_tower_lr", "resume", "resume_from_checkpoint",
                "overwrite_output_dir", "seed")
RECIPE_OPTIONS = ("image_size", "config_overrides", "synthetic_dir", "bias_lr_factor", "weight_decay", "lr_schedule",
                  "warmup_epochs", "warmup_factor", "min_lr_factor", "lr_noise_seed", "select_best_on_test",
                  "deterministic", "profile", "dataset_revision", "checkpoint_on_signal", "fill_missing_modalities")
# Model options: the towers' sub-configs (from --backbone) and the fields set from the run are no flags.
SET_BY_THE_RUN = ("vision_config", "text_config", *RUN_FIELDS)
# One group for the family's shared options, then one per built-in model (the registry, mmreid/models.py).
MODEL_OPTION_GROUPS = (
    FAMILY_OPTIONS_GROUP,
    *((entry.config_class, entry.options_group) for entry in BUILTIN_MODELS.values()),
)

USAGE_EXAMPLES = """\
Train a multi-modal (RGB / NIR / TIR) object re-identification model: DeMo, NEXT, or any model with remote code.

examples:
  python train.py                                   # CPU demo: synthetic RGBNT201-layout set, tiny DeMo
  python train.py --model next                      # the same for NEXT (captions included)
  accelerate launch train.py --preset rgbnt201 --dataset data/rgbnt201 --output-dir outputs/demo-rgbnt201
  accelerate launch train.py --config my_msvr310.yaml --dataset data/msvr310   # an edited copy of configs/msvr310.yaml
  python train.py --preset rgbnt201 --dataset data/rgbnt201 --resume      # continue a stopped run
  torchrun --nproc_per_node 2 train.py --output-dir outputs/demo-2proc    # 2 CPU processes, same math as 1

Options come from the recipe file (--preset or --config), then flags (highest). P x K is the global batch.
"""


def _typed_fields(cls) -> dict[str, tuple[type, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls) if f.init}


def _view(name: str, group: str, fields_by_name: dict, names: typing.Iterable[str]) -> type:
    """A parse-only dataclass holding copies of the named fields, shown in --help under ``group``."""
    specs = []
    for option in names:
        kind, original = fields_by_name[option]
        copy = field(default=original.default, default_factory=original.default_factory,
                     metadata=dict(original.metadata))
        specs.append((option, kind, copy))
    view = dataclasses.make_dataclass(name, specs)
    view._argument_group_name = group
    return view


def _model_option_classes() -> dict[str, type]:
    """One option dataclass per model group. An option several models declare (the same name and type, e.g.
    `caption_prefix` of NEXT and IDEA) is one flag, listed in the group of the first model that declares it; each
    model reads it with its own default when the run leaves it out."""
    classes, first, also = {}, {}, {}
    for cls, group in MODEL_OPTION_GROUPS:
        hints = typing.get_type_hints(cls.__init__)
        parameters = {p.name: p for p in option_parameters(cls, SET_BY_THE_RUN)}
        shared = [name for name in parameters if name in first]
        for name in shared:
            if hints[name] != first[name][1]:
                raise TypeError(f"option {name}: {cls.__name__} declares it as {hints[name]}, "
                                f"{first[name][0].__name__} as {first[name][1]}; one flag needs one type")
            also.setdefault(name, []).append(f"{cls.__name__} reads it too (its default: {parameters[name].default!r})")
        classes[f"model:{cls.__name__}"] = options_dataclass(cls, group, exclude=(*SET_BY_THE_RUN, *shared),
                                                             optional=True)
        first.update({name: (cls, hints[name]) for name in parameters if name not in first})
    for name, notes in also.items():  # the flag's help names every model that reads it, with that model's default
        owner = classes[f"model:{first[name][0].__name__}"]
        flag = next(f for f in dataclasses.fields(owner) if f.name == name)
        flag.metadata = {**flag.metadata, "help": f"{flag.metadata.get('help', '')} {'; '.join(notes)}."}
    return classes


def _parse_classes() -> dict[str, type]:
    """The dataclasses the parser reads, by role, in --help order (see MAIN_OPTIONS / RECIPE_OPTIONS)."""
    available = {**_typed_fields(ReIDTrainingArguments), **_typed_fields(ReIDArguments)}
    taken = set(MAIN_OPTIONS) | set(RECIPE_OPTIONS) | set(REFUSED_TRAINER_OPTIONS)
    trainer_options = [name for name in _typed_fields(ReIDTrainingArguments) if name not in taken]
    return {
        "main": _view("MainOptions", "ReID options", available, MAIN_OPTIONS),
        "recipe": _view("RecipeOptions", "recipe options", available, RECIPE_OPTIONS),
        "tuning": _view("TowerTuningOptions", "tower tuning options (mmreid.training.tuning)",
                        _typed_fields(TowerTuning), [f.name for f in dataclasses.fields(TowerTuning)]),
        "augment": options_dataclass(ReIDAugment, "augmentation options (ReIDAugment)",
                                     exclude=("erasing_area", "erasing_aspect", "pad_value")),
        "loss": options_dataclass(ReIDLoss, "loss options (ReIDLoss)"),
        **_model_option_classes(),
        "trainer": _view("TrainerOptions", "Trainer options (transformers.TrainingArguments)", available,
                         trainer_options),
    }


def build_parser() -> HfArgumentParser:
    """The parser of train.py. Bad values raise ``argparse.ArgumentError`` (``exit_on_error=False``) instead of
    exiting, so that every error is reported the same way: one line, exit status 2."""
    return HfArgumentParser(
        list(_parse_classes().values()),
        prog="train.py",
        usage="%(prog)s [--preset NAME | --config FILE] [--model NAME_OR_PATH] [--dataset PATH] [--output-dir DIR] "
              "[options]",
        description=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        exit_on_error=False,
        allow_abbrev=False,
    )


@dataclass
class TrainRun:
    """Everything one ``train.py`` run was asked for."""

    script: ReIDArguments
    training: ReIDTrainingArguments
    model_options: dict  # model config fields the run sets (nested dicts reach sub-configs)
    loss: dict  # ReIDLoss arguments
    augment: dict  # ReIDAugment arguments
    tuning: TowerTuning = dataclasses.field(default_factory=TowerTuning)  # what of the image tower trains


def load_recipe(path: str | Path, option: str) -> dict:
    """A recipe YAML file: ``option: value`` pairs (keys may use ``-`` or ``_``) and per-model sections."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"{option}: no such file {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UsageError(f"{option} {path}: not valid YAML{at} ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{option} {path}: expected a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve_defaults(preset: str | None, config: str | None, model: str | None, known: set[str]) -> dict:
    """The parser defaults of a run: its recipe file(s) flattened for ``model``, with the default output directory.

    ``known`` holds every option name; a top-level key that is none of them must be a model section (a mapping).
    """
    from_config = load_recipe(config, "--config") if config else {}
    preset = preset or from_config.pop("preset", None) or (None if config else DEFAULT_PRESET)
    from_config.pop("preset", None)
    values = {}
    if preset is not None:
        path = PRESETS_DIR / f"{preset}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
            raise UsageError(f"--preset must be one of {', '.join(names)} (files in {PRESETS_DIR}), got {preset!r}")
        values.update(load_recipe(path, "--preset"))
    values.update(from_config)
    model = model or values.get("model") or DEFAULT_MODEL
    model_label = model if model in BUILTIN_MODELS else Path(model).name
    sections = {key: values.pop(key) for key in list(values) if key not in known}
    for key, section in sections.items():
        if key in REFUSED_TRAINER_OPTIONS:
            source = config or f"--preset {preset}"
            raise UsageError(f"{source}: option {key} does nothing in train.py: {REFUSED_TRAINER_OPTIONS[key]}")
        if not isinstance(section, dict):
            source = config or f"--preset {preset}"
            raise UsageError(f"{source}: unknown option {key!r}; see python train.py --help")
    applied = sections.get(model_label, {})
    applied = {str(k).replace("-", "_"): v for k, v in applied.items()}
    unknown = sorted(set(applied) - known)
    if unknown:
        raise UsageError(f"recipe section {model_label!r}: unknown option(s) {unknown}; see python train.py --help")
    values.update(applied)
    values.update(model=model, preset=preset)
    values.setdefault("output_dir", f"outputs/{model_label}-{preset or Path(config).stem}")
    return values


def _unknown_options_error(remaining: list[str]) -> UsageError:
    for token in remaining:
        name = token.split("=", 1)[0].lstrip("-").replace("-", "_")
        if token.startswith("--") and name in REFUSED_TRAINER_OPTIONS:
            return UsageError(f"--{name.replace('_', '-')} does nothing in train.py: {REFUSED_TRAINER_OPTIONS[name]}")
    return UsageError(f"unknown option(s) {' '.join(remaining)}; see python train.py --help")


def typed_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The options ``argv`` gives (by dest name), whatever their values: an option a user typed is acted on or
    refused even when its value is the default."""
    typed = set()
    for action in parser._actions:
        for flag in action.option_strings:
            if any(token == flag or token.startswith(flag + "=") for token in argv):
                typed.add(action.dest)
    return typed


# Which schedule reads which option: the per-epoch schedules (demo_cosine*) and the Trainer's (--lr-schedule trainer).
EPOCH_SCHEDULE_OPTIONS = ("warmup_epochs", "warmup_factor", "min_lr_factor", "lr_noise_seed")
TRAINER_SCHEDULE_OPTIONS = ("lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps")


def check_schedule_options(lr_schedule: str, typed: set[str], given: set[str]) -> None:
    """Refuse, in one line, a schedule option the chosen --lr-schedule does not read: ``typed`` holds the options
    of the command line, ``given`` those and the recipe file's (a preset sets the per-epoch options, which
    --lr-schedule trainer then simply does not use)."""
    if lr_schedule in EPOCH_SCHEDULES:
        for name in TRAINER_SCHEDULE_OPTIONS:
            if name in given:
                raise UsageError(trainer_schedule_refusal(name, lr_schedule))
        if lr_schedule == "demo_cosine_plain" and "lr_noise_seed" in typed:
            raise UsageError("--lr-noise-seed does nothing under --lr-schedule demo_cosine_plain (no lr noise): use "
                             "--lr-schedule demo_cosine")
    else:
        for name in EPOCH_SCHEDULE_OPTIONS:
            if name in typed:
                raise UsageError(f"--{name.replace('_', '-')} does nothing under --lr-schedule {lr_schedule}: the "
                                 "Trainer's schedule reads --lr-scheduler-type, --lr-scheduler-kwargs and "
                                 "--warmup-steps")


def check_report_to(report_to: list[str]) -> None:
    """Refuse, before anything is written, a ``--report-to`` integration the Trainer would only reject once the
    dataset and model are built (with a traceback): an unknown name, or tensorboard without its package."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK, is_tensorboard_available

    for name in report_to:
        if name not in INTEGRATION_TO_CALLBACK:
            raise UsageError(f"--report-to {name}: unknown integration; use none, all or one of "
                             f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
    if "tensorboard" in report_to and not is_tensorboard_available():
        raise UsageError("--report-to tensorboard: the tensorboard package is not installed; pip install tensorboard")


def check_recipe_types(parser: argparse.ArgumentParser, values: dict, source: str) -> None:
    """Each recipe-file value has its option's type (YAML gives lists, mappings and numbers the command line never
    does): a wrong one is refused in one line naming the file and the option, before the dataclasses see it. A
    single value of a list option becomes a one-item list, as on the command line."""
    actions = {action.dest: action for action in parser._actions}
    for key, value in values.items():
        action = actions.get(key)
        if action is None or action.type is None or value is None:
            continue
        many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
        if many and not isinstance(value, (list, dict)):
            values[key] = value = [value]  # as `--option value` on the command line
        items = value if many else [value]
        try:
            if isinstance(value, dict) or (not many and isinstance(value, list)):
                raise ValueError
            for item in items:
                if isinstance(item, (list, dict)):
                    raise ValueError
                action.type(item if isinstance(item, (bool, str)) else str(item))
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            expected = getattr(action.type, "__name__", "a valid value")
            expected = f"a list of {expected}" if many else expected
            raise UsageError(f"{source}: option {key}: expected {expected}, got {value!r}") from None


def parse_args(argv: list[str] | None = None) -> TrainRun:
    """Parse ``argv`` (default: ``sys.argv[1:]``) on top of the recipe file's defaults.

    Two passes over one parser: the first reads --preset / --config / --model (and answers --help), which choose
    the defaults; the second parses every option on top of them. Raises :class:`UsageError` on bad input.
    """
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    classes = _parse_classes()
    parser = build_parser()
    known = {f.name for cls in classes.values() for f in dataclasses.fields(cls)}
    try:
        first, _ = parser.parse_known_args(argv)
        defaults = resolve_defaults(first.preset, first.config, first.model, known)
        check_recipe_types(parser, defaults, first.config or f"--preset {defaults['preset']}")
        parser.set_defaults(**defaults)
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except argparse.ArgumentError as exc:
        raise UsageError(str(exc)) from None
    if remaining:
        raise _unknown_options_error(remaining)
    typed = typed_options(parser, argv)
    values = {name: value for obj in parsed for name, value in dataclasses.asdict(obj).items()}

    def names(*roles) -> list[str]:
        return [f.name for role, cls in classes.items() if role.split(":")[0] in roles for f in dataclasses.fields(cls)]

    script = ReIDArguments(**{f.name: values[f.name] for f in dataclasses.fields(ReIDArguments)})
    if script.image_size is not None and (len(script.image_size) != 2 or min(script.image_size) < 1):
        raise UsageError(f"--image-size takes a positive height and width, e.g. --image-size 256 128; got "
                         f"{script.image_size}")
    training_names = {f.name for f in dataclasses.fields(ReIDTrainingArguments) if f.init}
    try:
        training = ReIDTrainingArguments(**{k: v for k, v in values.items() if k in training_names})
    except ValueError as exc:  # the Trainer's own checks may span lines: one line here
        raise UsageError(" ".join(str(exc).split())) from None
    check_schedule_options(training.lr_schedule, typed, typed | set(defaults))
    try:
        tuning = TowerTuning(**{f.name: values[f.name] for f in dataclasses.fields(TowerTuning)})
        check_tuning_options(tuning, typed | set(defaults))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if tuning.mode != "full" and "vision_tower_lr" in typed:
        raise UsageError(f"--vision-tower-lr does nothing under --tower-tuning {tuning.mode}: the tower's pretrained "
                         "weights do not train (its new parameters and LoRA adapters train at --learning-rate)")
    check_optimizer_options(training)
    check_report_to(training.report_to)
    bad_signals = [name for name in script.checkpoint_on_signal if name.upper() not in CHECKPOINT_SIGNALS]
    if bad_signals:
        raise UsageError(f"--checkpoint-on-signal {' '.join(bad_signals)}: expected signal names among "
                         f"{', '.join(CHECKPOINT_SIGNALS)}")
    script.checkpoint_on_signal = list(dict.fromkeys(name.upper() for name in script.checkpoint_on_signal))
    check_output_dir(training.output_dir, "--output-dir")  # before any work: not a file, writable
    if not script.dataset:
        check_output_dir(script.synthetic_dir, "--synthetic-dir")
    return TrainRun(
        script=script,
        training=training,
        model_options={k: values[k] for k in names("model") if values[k] is not None},
        loss={k: values[k] for k in names("loss")},
        augment={k: values[k] for k in names("augment")},
        tuning=tuning,
    )
