"""DeMoTrainer and train.py on a tiny synthetic set: loss, optimizer groups, schedule, GA, reproducibility, resume."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train  # noqa: E402
from demo_reid.data import load_reid_dataset  # noqa: E402
from demo_reid.losses import reid_loss  # noqa: E402
from demo_reid.scheduler import demo_cosine_lr  # noqa: E402
from demo_reid.trainer import DeMoTrainer  # noqa: E402
from demo_reid.training_args import parse_args  # noqa: E402

TINY = [
    "--backbone", "tiny", "--tiny-hidden-size", "32", "--tiny-num-layers", "1", "--tiny-patch-size", "8",
    "--image-height", "32", "--image-width", "16", "--atmoe-heads", "2",
    "--num-identities", "3", "--num-instances", "2", "--per-device-eval-batch-size", "32",
    "--logging-steps", "1", "--disable-tqdm", "true", "--save-strategy", "no",
]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from demo_reid.dataset_builder import build_dataset, save_dataset
    from demo_reid.synthetic import make_synthetic

    base = tmp_path_factory.mktemp("synthetic")
    root = make_synthetic("RGBNT201", base / "raw", seed=1, num_train_ids=8, num_test_ids=4, images_per_id=5,
                          image_size=(32, 16))
    return str(save_dataset(build_dataset("RGBNT201", root, cache_dir=base / "cache"), base / "ds"))


def _trainer(tiny_dataset, tmp_path, extra=()):
    script_args, args = parse_args([*TINY, "--output-dir", str(tmp_path / "out"), "--dataset", tiny_dataset, *extra])
    ds = load_reid_dataset(tiny_dataset)
    torch.manual_seed(args.seed)
    model = train.build_model(script_args, len(set(ds["train"]["label"])), train._num_cameras(ds))
    return DeMoTrainer(model=model, args=args, train_dataset=ds["train"], query_dataset=ds["query"],
                       gallery_dataset=ds["gallery"])


def _losses(history):
    return [h["loss"] for h in history if "loss" in h]


def test_compute_loss_sums_supervised_pairs(tiny_dataset, tmp_path):
    trainer = _trainer(tiny_dataset, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["pixel_values"].shape == (6, 3, 3, 32, 16)
    model = trainer.model.eval()  # eval: no augmentation, no dropout -> comparable forward passes
    loss, out = trainer.compute_loss(model, batch, return_outputs=True)
    assert len(out.logits) == len(out.features) == 2  # direct classifier + ATMoE feature
    expected = reid_loss(out.logits, out.features, batch["labels"], 0.25, 1.0, 0.1).loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    parts = [reid_loss((lg,), (f,), batch["labels"], 0.25, 1.0, 0.1).loss.item() for lg, f in zip(out.logits, out.features)]
    assert loss.item() == pytest.approx(sum(parts), rel=1e-6)


def test_training_step_divides_by_accumulation(tiny_dataset, tmp_path):
    trainer = _trainer(tiny_dataset, tmp_path, ["--gradient-accumulation-steps", "2", "--flip-prob", "0",
                                                "--erasing-prob", "0", "--padding", "0"])
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 2
    model = trainer.model.train()
    torch.manual_seed(0)  # same dropout draws in both passes
    full = trainer.compute_loss(model, dict(batch)).item()
    torch.manual_seed(0)
    step_loss = trainer.training_step(model, dict(batch))
    # the accumulated gradient is the mean of the micro-batch gradients
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert step_loss.item() == pytest.approx(full / 2, rel=1e-5)


def test_optimizer_groups_and_schedule(tiny_dataset, tmp_path):
    trainer = _trainer(tiny_dataset, tmp_path, ["--preset", "rgbnt201", "--num-train-epochs", "6", "--warmup-epochs", "2"])
    opt = trainer.create_optimizer()
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["head"]["lr"] == 3.5e-4 and groups["head_bias"]["lr"] == 7e-4
    assert groups["vision_tower"]["lr"] == 5e-6
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups)
    tower = {id(p) for n, p in trainer.model.named_parameters() if n.startswith("vision_tower.")}
    assert {id(p) for p in groups["vision_tower"]["params"]} == tower
    assert any(n.endswith("bias") for n, _ in trainer.model.vision_tower.named_parameters())  # tower biases: tower lr
    spe = trainer.steps_per_epoch()
    sched = trainer.create_scheduler(num_training_steps=6 * spe)
    bases = [g["initial_lr"] for g in opt.param_groups]
    for step in range(6 * spe):
        t = step // spe + 1
        for g, base in zip(opt.param_groups, bases):
            assert g["lr"] == pytest.approx(demo_cosine_lr(t, base, 6, 2, 3.5e-5, 3.5e-7), rel=1e-12)
        opt.step()
        sched.step()


def test_worker_count_does_not_change_losses(tiny_dataset, tmp_path):
    runs = []
    for workers in (0, 2):
        trainer = _trainer(tiny_dataset, tmp_path / str(workers),
                           ["--max-steps", "3", "--dataloader-num-workers", str(workers)])
        trainer.train()
        runs.append(_losses(trainer.state.log_history))
    assert len(runs[0]) == 3
    assert runs[0] == runs[1]


def test_resume_after_crash_matches_uninterrupted_run(tiny_dataset, tmp_path):
    common = [*TINY, "--dataset", tiny_dataset, "--max-steps", "6", "--save-strategy", "steps", "--save-steps", "3"]
    full = train.main([*common, "--output-dir", str(tmp_path / "full")])
    crashed = tmp_path / "crashed"
    with pytest.raises(train.SimulatedCrash):
        train.main([*common, "--output-dir", str(crashed), "--crash-after-steps", "3"])
    assert (crashed / "checkpoint-3" / "model.safetensors").is_file()
    resumed = train.main([*common, "--output-dir", str(crashed), "--resume"])
    assert resumed["global_step"] == full["global_step"] == 6
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(crashed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert resumed["mAP"] == pytest.approx(full["mAP"])
    info = json.loads((crashed / "run_info.json").read_text())
    assert info["seed"] == 42 and "torch" in info["versions"] and "config" in info
    # weights are safetensors only (training_args.bin / optimizer.pt are Trainer state, not weights)
    assert not list((tmp_path / "full").rglob("pytorch_model*.bin"))
    assert (crashed / "checkpoint-6" / "model.safetensors").is_file()


def test_default_run_end_to_end(tmp_path):
    """The embedded default (synthetic set + CLIP-shaped tiny model), cut to a few steps for CI."""
    out = tmp_path / "default"
    result = train.main(["--output-dir", str(out), "--synthetic-dir", str(tmp_path / "syn"), "--max-steps", "2",
                         "--disable-tqdm", "true", "--save-strategy", "no"])
    assert result["world_size"] == 1 and result["selection"] == "final epoch"
    assert 0.0 <= result["mAP"] <= 100.0 and math.isfinite(result["train_loss"])
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "README.md").read_text().count("mAP") >= 1
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "demo_reid" and "auto_map" in config


def test_two_process_cpu_run(tiny_dataset, tmp_path):
    """The documented 2-process CPU launch really runs 2 ranks with their own P x K batches."""
    out = tmp_path / "ddp"
    import socket

    with socket.socket() as sock:  # a free port, so parallel CI jobs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "accelerate_configs" / "cpu_2proc.yaml"), "--main_process_port", str(port),
           str(REPO / "train.py"), *TINY, "--dataset", tiny_dataset, "--output-dir", str(out), "--max-steps", "2",
           "--gather-features", "true"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert json.loads((out / "final_metrics.json").read_text())["world_size"] == 2


def test_config_precedence_preset_yaml_flags(tmp_path):
    from dataclasses import fields

    from demo_reid.training_args import DeMoScriptArguments, DeMoTrainingArguments, build_parser

    cfg = tmp_path / "run.yaml"
    cfg.write_text("preset: msvr310\nnum-instances: 3\nlr_scheduler_type: demo_cosine_plain\n")
    script_args, args = parse_args(["--config", str(cfg), "--num-identities", "5", "--output-dir", str(tmp_path)])
    assert (script_args.image_height, script_args.image_width, script_args.atmoe_heads) == (128, 256, 8)  # preset
    assert not script_args.direct_classifier and args.num_train_epochs == 50
    assert args.num_instances == 3 and args.lr_scheduler_type == "demo_cosine_plain"  # YAML
    assert args.num_identities == 5 and args.per_device_train_batch_size == 15  # flag
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_identitys: 4\n")
    with pytest.raises(ValueError, match="num_identitys"):
        parse_args(["--config", str(bad)])
    with pytest.raises(ValueError, match="num_identities"):
        parse_args(["--num-identities", "1", "--output-dir", str(tmp_path)])
    help_text = build_parser().format_help()
    for cls in (DeMoScriptArguments, DeMoTrainingArguments):
        for f in fields(cls):
            if f.init:
                assert f"--{f.name}" in help_text, f.name


def test_gradient_checkpointing_option_trains(tiny_dataset, tmp_path):
    trainer = _trainer(tiny_dataset, tmp_path, ["--max-steps", "1", "--activation-checkpointing", "true"])
    trainer.train()
    assert any(getattr(m, "gradient_checkpointing", False) for m in trainer.model.vision_tower.modules())
    assert math.isfinite(_losses(trainer.state.log_history)[0])
