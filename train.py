#!/usr/bin/env python
"""Train DeMo for multi-modal (RGB / NIR / TIR) object re-identification (``python train.py --help``).

Bad input (unknown preset or backbone, missing dataset, incompatible flags, an output directory holding a previous
run) is reported in one line naming the argument, with exit status 2, before anything is written.
See docs/training.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from a plain checkout too

import torch  # noqa: E402
from transformers import set_seed  # noqa: E402
from transformers.trainer_utils import enable_full_determinism  # noqa: E402

from demo_reid.errors import first_line  # noqa: E402
from demo_reid.evaluation.metrics import METRIC_KEYS  # noqa: E402
from demo_reid.hub.model_card import BEST_ON_TEST, FINAL_EPOCH, ModelCardInfo  # noqa: E402
from demo_reid.training.arguments import (  # noqa: E402
    RANDOM_BACKBONES,
    DeMoScriptArguments,
    DeMoTrainingArguments,
    parse_args,
)

logger = logging.getLogger("train")

SYNTHETIC = {"layout": "RGBNT201", "seed": 0, "num_train_ids": 40, "num_test_ids": 20, "images_per_id": 12}


class UsageError(Exception):
    """Bad command-line input; printed as one line, exit status 2."""


def prepare_synthetic(path: str | Path, training_args: DeMoTrainingArguments) -> Path:
    """Build (once) the synthetic RGBNT201-layout DatasetDict at ``path``, with its captions (NEXT reads them)."""
    from demo_reid.data.builder import build_dataset, save_dataset
    from demo_reid.data.synthetic import make_synthetic

    path = Path(path)
    with training_args.main_process_first(desc="synthetic dataset"):
        if not (path / "dataset_dict.json").is_file():
            with tempfile.TemporaryDirectory() as raw:
                root = make_synthetic(SYNTHETIC["layout"], raw, seed=SYNTHETIC["seed"],
                                      num_train_ids=SYNTHETIC["num_train_ids"], num_test_ids=SYNTHETIC["num_test_ids"],
                                      images_per_id=SYNTHETIC["images_per_id"])
                with tempfile.TemporaryDirectory() as cache:
                    dataset = build_dataset(SYNTHETIC["layout"], root, captions_dir=root / "captions", cache_dir=cache)
                    save_dataset(dataset, path, overwrite=True)
    return path


def _loss_and_size_kwargs(script_args: DeMoScriptArguments, num_labels: int, num_cameras: int) -> dict:
    """Config fields both models share: input size, identities, cameras, SIE, head init and the loss recipe."""
    return dict(
        image_size=(script_args.image_height, script_args.image_width),
        num_labels=num_labels,
        num_cameras=num_cameras,
        sie_coefficient=script_args.sie_coefficient,
        head_init=script_args.head_init,
        id_loss_weight=script_args.id_loss_weight,
        triplet_loss_weight=script_args.triplet_loss_weight,
        label_smoothing=script_args.label_smoothing,
        triplet_margin=script_args.triplet_margin,
    )


def _tiny_vision_overrides(script_args: DeMoScriptArguments) -> dict:
    return dict(
        hidden_size=script_args.tiny_hidden_size,
        num_hidden_layers=script_args.tiny_num_layers,
        num_attention_heads=max(1, script_args.tiny_hidden_size // 32),
        patch_size=script_args.tiny_patch_size,
        image_size=max(script_args.image_height, script_args.image_width),
        projection_dim=script_args.tiny_hidden_size,
    )


def build_next_model(script_args: DeMoScriptArguments, num_labels: int, num_cameras: int, tokenizer):
    """NextModel for ``--backbone``: both towers from a CLIP checkpoint, or random-init towers asked for by name
    (the text tower sized to ``tokenizer``'s vocabulary)."""
    from configuration_next import NextConfig
    from demo_reid.hub.backbones import clip_vit_b16_vision_config, tiny_next_config, tiny_text_config
    from modeling_next import NextModel

    common = _loss_and_size_kwargs(script_args, num_labels, num_cameras) | dict(
        num_semantic_experts=script_args.num_semantic_experts,
        num_structure_experts=script_args.num_structure_experts,
        tokens_per_expert=script_args.tokens_per_expert,
        caption_sentences_per_expert=script_args.caption_sentences_per_expert,
        use_tmse=script_args.use_tmse,
        use_csse=script_args.use_csse,
        use_text=script_args.use_text,
    )
    backbone = script_args.backbone
    if backbone == "tiny":
        vision = _tiny_vision_overrides(script_args)
        text = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=vision["projection_dim"])
        config = tiny_next_config(tokenizer, vision_overrides=vision, text_overrides=text, **common)
        return NextModel(config)
    if backbone == "clip-b16-random":
        logger.warning("--backbone %s: random initialisation of the ViT-B/16 shapes, not the papers' recipe", backbone)
        text = tiny_text_config(tokenizer, hidden_size=512, num_hidden_layers=12, num_attention_heads=8,
                                projection_dim=512)
        return NextModel(NextConfig(vision_config=clip_vit_b16_vision_config(), text_config=text, **common))
    if backbone == "vit-b16-random":
        raise UsageError("--model next needs a CLIP tower (image and text): use --backbone clip-b16-random or a "
                         "CLIP checkpoint")
    local = Path(backbone).expanduser()
    try:
        return NextModel.from_clip_pretrained(str(local) if local.exists() else backbone, **common)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--backbone {backbone}: could not load a CLIP model for --model next "
                         f"({first_line(exc)}); {BACKBONE_HINT}") from None


def load_tokenizer(script_args: DeMoScriptArguments, dsdict):
    """The caption tokenizer of ``--model next``: the CLIP checkpoint's own, or (random-init towers, no Hub) a
    word-level one built from the training captions; None for DeMo."""
    if script_args.model != "next":
        return None
    from demo_reid.data.collate import CAPTION_COLUMNS
    from demo_reid.data.text import build_caption_tokenizer

    if script_args.backbone not in RANDOM_BACKBONES:
        from transformers import AutoTokenizer

        local = Path(script_args.backbone).expanduser()
        try:
            return AutoTokenizer.from_pretrained(str(local) if local.exists() else script_args.backbone)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--backbone {script_args.backbone}: no tokenizer loads from it "
                             f"({first_line(exc)}); --model next needs the CLIP tokenizer saved beside the weights")
    train_split = dsdict["train"]
    texts = [t for c in CAPTION_COLUMNS if c in train_split.column_names for t in train_split[c] if t]
    if not texts:
        logger.warning("--model next: the dataset has no captions; the model will use its no-text embeddings")
        texts = ["no caption"]
    return build_caption_tokenizer(texts, model_max_length=64)


def build_model(script_args: DeMoScriptArguments, num_labels: int, num_cameras: int, tokenizer=None):
    """The model of ``--model`` for ``--backbone``: a pretrained tower, or a random-init tower asked for by name."""
    if script_args.model == "next":
        return build_next_model(script_args, num_labels, num_cameras, tokenizer)
    return build_demo_model(script_args, num_labels, num_cameras)


def build_demo_model(script_args: DeMoScriptArguments, num_labels: int, num_cameras: int):
    """DeMoModel for ``--backbone``: a pretrained CLIP / ViT tower, or a random-init tower asked for by name."""
    from configuration_demo import DeMoConfig
    from demo_reid.hub.backbones import clip_vit_b16_vision_config, tiny_vision_config, vit_b16_vision_config
    from modeling_demo import DeMoModel

    common = _loss_and_size_kwargs(script_args, num_labels, num_cameras) | dict(
        atmoe_heads=script_args.atmoe_heads,
        direct_classifier=script_args.direct_classifier,
        hdm_dropout=script_args.hdm_dropout,
    )
    backbone = script_args.backbone
    if backbone == "tiny":
        vision = tiny_vision_config("clip", **_tiny_vision_overrides(script_args))
        return DeMoModel(DeMoConfig(vision_config=vision, **common))
    if backbone in ("clip-b16-random", "vit-b16-random"):
        logger.warning("--backbone %s: random initialisation of the ViT-B/16 shapes, not the papers' recipe", backbone)
        vision = clip_vit_b16_vision_config() if backbone == "clip-b16-random" else vit_b16_vision_config()
        return DeMoModel(DeMoConfig(vision_config=vision, **common))
    return load_pretrained_backbone(backbone, common)


BACKBONE_HINT = ("point --backbone at a local directory holding a CLIP or ViT checkpoint (config.json + weights, "
                 "e.g. saved with CLIPModel.save_pretrained), or name a random-init tower: " + ", ".join(RANDOM_BACKBONES))


def check_backbone(backbone: str) -> None:
    """Fail before anything is written when ``--backbone`` names no loadable CLIP / ViT checkpoint."""
    if backbone in RANDOM_BACKBONES:
        return
    from transformers import AutoConfig

    local = Path(backbone).expanduser()
    if (backbone.startswith((".", "/", "~")) or local.exists()) and not (local / "config.json").is_file():
        raise UsageError(f"--backbone {backbone}: no config.json in that directory; {BACKBONE_HINT}")
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would bury the one-line error below
    try:
        config = AutoConfig.from_pretrained(str(local) if local.exists() else backbone)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--backbone {backbone}: could not load it ({first_line(exc)}); {BACKBONE_HINT}") from None
    finally:
        hub_logger.setLevel(level)
    if config.model_type not in ("clip", "clip_vision_model", "vit"):
        raise UsageError(f"--backbone {backbone} is a {config.model_type!r} checkpoint; expected CLIP or ViT")


def load_pretrained_backbone(backbone: str, config_kwargs: dict):
    """``DeMoModel.from_vision_pretrained`` with a one-line UsageError when the tower cannot be loaded."""
    from modeling_demo import DeMoModel

    local = Path(backbone).expanduser()
    try:
        return DeMoModel.from_vision_pretrained(str(local) if local.exists() else backbone, **config_kwargs)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--backbone {backbone}: could not load the tower ({first_line(exc)}); {BACKBONE_HINT}") from None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id_of(backbone: str) -> str | None:
    """The Hub id of the pretrained tower, for the card's ``base_model``: ``--backbone`` itself when it names a Hub
    repo, the ``_name_or_path`` recorded in a local checkpoint's config.json when that is one; None otherwise."""
    if backbone in RANDOM_BACKBONES:
        return None
    local = Path(backbone).expanduser()
    if not local.exists():
        return backbone if _HUB_ID.match(backbone) else None
    try:
        recorded = json.loads((local / "config.json").read_text()).get("_name_or_path", "")
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, str) and _HUB_ID.match(recorded) and not Path(recorded).exists() else None


def dataset_name(path: str | None, dsdict) -> str:
    """The dataset's name for the card: the one build_dataset recorded, else the folder's name."""
    if not path:
        return f"synthetic-{SYNTHETIC['layout'].lower()}"
    return dsdict["train"].info.dataset_name or Path(path).name


def _num_cameras(dsdict) -> int:
    return 1 + max(max(dsdict[s]["camid"]) for s in ("train", "query", "gallery"))


def resolve_resume(script_args: DeMoScriptArguments, training_args: DeMoTrainingArguments) -> str | None:
    """Check the output directory against --resume / --resume-from-checkpoint / --overwrite-output-dir.

    Returns the checkpoint to resume from (or None). Raises UsageError, before anything is written, when the
    directory holds a previous run and none of those flags says what to do with it.
    """
    from demo_reid.training.checkpoints import (
        find_resume_checkpoint,
        incomplete_checkpoints,
        is_complete_checkpoint,
        previous_run_contents,
    )

    output_dir = Path(training_args.output_dir)
    if training_args.resume_from_checkpoint:
        checkpoint = Path(training_args.resume_from_checkpoint).expanduser()
        if not is_complete_checkpoint(checkpoint):
            raise UsageError(f"--resume-from-checkpoint {checkpoint}: not a complete checkpoint folder (expected "
                             "trainer_state.json and model.safetensors in it, as train.py writes checkpoint-N)")
        if script_args.resume:
            raise UsageError("--resume and --resume-from-checkpoint exclude each other: give one")
        return str(checkpoint)
    if script_args.resume:
        if script_args.overwrite_output_dir:
            raise UsageError("--resume and --overwrite-output-dir exclude each other: give one")
        for folder in incomplete_checkpoints(output_dir):
            logger.warning("--resume: skipping %s, a checkpoint the previous run did not finish writing", folder)
        checkpoint = find_resume_checkpoint(output_dir)
        if checkpoint is None:
            logger.warning("--resume: no complete checkpoint in %s; starting from scratch", output_dir)
            return None
        logger.warning("--resume: resuming from %s", checkpoint)
        return str(checkpoint)
    held = previous_run_contents(output_dir)
    if held and not script_args.overwrite_output_dir:
        raise UsageError(f"--output-dir {output_dir} already holds a previous run ({', '.join(held[:4])}); pass "
                         "--resume to continue it, --overwrite-output-dir to replace it, or another --output-dir")
    return None


def main(argv: list[str] | None = None) -> dict:
    try:
        script_args, training_args = parse_args(argv)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    resume = resolve_resume(script_args, training_args)
    check_backbone(script_args.backbone)
    if training_args.deterministic:
        enable_full_determinism(training_args.seed)
    else:
        set_seed(training_args.seed)

    from demo_reid.training.checkpoints import clear_previous_run
    from demo_reid.training.profiling import ProfilerCallback
    from demo_reid.data.loading import load_reid_dataset
    from demo_reid.hub.processors import build_processor
    from demo_reid.training.trainer import ReIDTrainer, RunInfoCallback, collect_run_info

    if script_args.dataset:
        try:
            dsdict = load_reid_dataset(script_args.dataset)
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(f"--dataset: {exc}") from None
        dataset_path = script_args.dataset
    else:
        dataset_path = prepare_synthetic(script_args.synthetic_dir, training_args)
        dsdict = load_reid_dataset(dataset_path)
    num_labels = len(set(dsdict["train"]["label"]))
    tokenizer = load_tokenizer(script_args, dsdict)
    model = build_model(script_args, num_labels, _num_cameras(dsdict), tokenizer)
    if training_args.deterministic:
        from demo_reid.training.profiling import make_deterministic

        make_deterministic(model)  # math SDPA only: the fused attention kernels vary run to run
    if script_args.overwrite_output_dir and training_args.process_index == 0:
        clear_previous_run(training_args.output_dir)

    if script_args.select_best_on_test:
        training_args.load_best_model_at_end = True
        training_args.metric_for_best_model = "mAP"
        training_args.greater_is_better = True

    run_info = collect_run_info(
        {"script": asdict(script_args), "training": training_args.to_dict()},
        seed=training_args.seed,
        world_size=training_args.world_size,
        dataset=str(dataset_path),
        synthetic=None if script_args.dataset else SYNTHETIC,
        resumed_from=resume,
    )
    trainer = ReIDTrainer(
        model=model,
        args=training_args,
        train_dataset=dsdict["train"],
        query_dataset=dsdict["query"],
        gallery_dataset=dsdict["gallery"],
        callbacks=[RunInfoCallback(run_info), *([ProfilerCallback()] if script_args.profile else [])],
        processing_class=build_processor(model.config, tokenizer),  # saved with every checkpoint and the final model
    )
    trainer.select_best_on_test = script_args.select_best_on_test

    train_result = trainer.train(resume_from_checkpoint=resume)

    metrics = trainer.evaluate()
    trainer.close_event_writers()  # --report-to tensorboard: the final evaluation's point is on disk
    label = BEST_ON_TEST if script_args.select_best_on_test else FINAL_EPOCH
    result = {
        "mAP": metrics["eval_mAP"],
        "Rank-1": metrics["eval_Rank-1"],
        "Rank-5": metrics.get("eval_Rank-5"),
        "Rank-10": metrics.get("eval_Rank-10"),
        "mINP": metrics.get("eval_mINP"),
        "selection": label,
        "train_loss": train_result.training_loss,
        "global_step": trainer.state.global_step,
        "world_size": training_args.world_size,
    }
    trainer.save_model(training_args.output_dir)  # save_pretrained: safetensors + remote code
    trainer.save_state()  # trainer_state.json with the log history (losses and learning rates per logged step)
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        (out / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        trainer.model_card_info = ModelCardInfo(
            model_type=model.config.model_type,
            name=out.name,
            repo_id=training_args.hub_model_id or f"path/to/{out.name}",
            dataset_name=dataset_name(script_args.dataset, dsdict),
            dataset_description=(f"the dataset at {script_args.dataset}" if script_args.dataset
                                 else f"the synthetic {SYNTHETIC['layout']}-layout set ({SYNTHETIC['num_train_ids']} "
                                 f"train / {SYNTHETIC['num_test_ids']} test identities, seed {SYNTHETIC['seed']})"),
            backbone=script_args.backbone,
            base_model=hub_id_of(script_args.backbone),
            research_only_data=bool(script_args.dataset),
            uses_text=bool(getattr(model.config, "use_text", False)),
            uses_cameras=model.config.num_cameras > 0,
            metrics={k: result[k] for k in METRIC_KEYS if result[k] is not None},
            selection=label,
            recipe={
                "model": script_args.model,
                "preset": script_args.preset,
                "image_size": f"{script_args.image_height}x{script_args.image_width}",
                "P x K": f"{training_args.num_identities} x {training_args.num_instances}",
                "epochs": training_args.num_train_epochs,
                "lr (head / bias / tower)": f"{training_args.learning_rate} / "
                f"{training_args.learning_rate * training_args.bias_lr_factor} / {training_args.vision_tower_lr}",
                "scheduler": training_args.lr_scheduler_type,
                "world_size": training_args.world_size,
                "seed": training_args.seed,
            },
        )
        trainer.create_model_card()
        print(
            f"[{label}] mAP {result['mAP']:.2f}  Rank-1 {result['Rank-1']:.2f}  Rank-5 {result['Rank-5']:.2f}  "
            f"Rank-10 {result['Rank-10']:.2f}  (world size {result['world_size']}, saved to {out})"
        )
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message=f"{script_args.model} training run")
    return result


def cli(argv: list[str] | None = None) -> int:
    """``main`` with bad input reported as ``train.py: error: ...`` (one line) and exit status 2."""
    try:
        main(argv)
    except UsageError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sys.exit(cli())
