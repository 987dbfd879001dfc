"""Every ``transformers.TrainingArguments`` field acts in train.py or is refused in one line naming what to use
instead: the walk over the fields, the refusals, and the tests that show the options acting (the optimizer, the
schedule, logging, evaluation timing, checkpoints, the data loader, DDP, the Hub), plus the selection label of
--load-best-model-at-end and a run that does not depend on when it is evaluated."""

import ast
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN as TINY, tiny_trainer as _trainer
from safetensors.torch import load_file
from transformers import TrainingArguments

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train  # noqa: E402
from mmreid.training.arguments import REFUSED_TRAINER_OPTIONS, build_parser, parse_args  # noqa: E402
from mmreid.training.trainer import PARAM_GROUPS  # noqa: E402

TESTS = Path(__file__).resolve().parent
HERE = "test_trainer_options.py"

# Each TrainingArguments field that acts in train.py -> the test that shows it acting ("file::test"). A field is here
# or in REFUSED_TRAINER_OPTIONS (mmreid/training/arguments.py), never both, never neither.
ACTING = {
    "output_dir": "test_train.py::test_default_run_reaches_its_headline_map",
    "num_train_epochs": "test_train.py::test_optimizer_groups_and_schedule",
    "max_steps": "test_train.py::test_resume_after_a_kill_following_a_checkpoint",
    "learning_rate": "test_train.py::test_optimizer_groups_and_schedule",
    "weight_decay": f"{HERE}::test_default_optimizer_is_the_authors_adam_and_is_recorded_as_such",
    "optim": f"{HERE}::test_optim_chooses_the_optimizer_of_the_three_groups",
    "optim_args": f"{HERE}::test_optim_chooses_the_optimizer_of_the_three_groups",
    "adam_beta1": f"{HERE}::test_default_optimizer_is_the_authors_adam_and_is_recorded_as_such",
    "adam_beta2": f"{HERE}::test_default_optimizer_is_the_authors_adam_and_is_recorded_as_such",
    "adam_epsilon": f"{HERE}::test_default_optimizer_is_the_authors_adam_and_is_recorded_as_such",
    "lr_scheduler_type": f"{HERE}::test_trainer_schedule_options_act_under_lr_schedule_trainer",
    "lr_scheduler_kwargs": f"{HERE}::test_trainer_schedule_options_act_under_lr_schedule_trainer",
    "warmup_steps": f"{HERE}::test_trainer_schedule_options_act_under_lr_schedule_trainer",
    "gradient_accumulation_steps": "test_train.py::test_training_step_divides_by_accumulation",
    "max_grad_norm": f"{HERE}::test_max_grad_norm_clips_the_update",
    "bf16": "test_mixed_precision.py::test_bf16_training_has_finite_losses_close_to_fp32",
    "fp16": "test_gpu_check.py::test_dry_run_runs_every_step_and_writes_the_report",
    "tf32": f"{HERE}::test_tf32_acts_on_a_gpu_and_is_refused_without_one",
    "use_cpu": "test_train.py::test_bad_input_is_one_line_exit_2_and_writes_nothing",
    "activation_checkpointing": "test_train.py::test_gradient_checkpointing_option_trains",
    "torch_compile": "test_train_compile.py::test_compiled_losses_match_eager_at_every_logged_step",
    "torch_empty_cache_steps": f"{HERE}::test_logging_checkpoint_and_cache_options_act",
    "logging_strategy": f"{HERE}::test_evaluation_does_not_change_the_training",
    "logging_steps": f"{HERE}::test_logging_checkpoint_and_cache_options_act",
    "logging_first_step": f"{HERE}::test_logging_checkpoint_and_cache_options_act",
    "logging_nan_inf_filter": f"{HERE}::test_logging_checkpoint_and_cache_options_act",
    "log_level": f"{HERE}::test_loader_seed_ddp_and_log_options_reach_where_they_act",
    "disable_tqdm": f"{HERE}::test_logging_checkpoint_and_cache_options_act",
    "skip_memory_metrics": f"{HERE}::test_logging_checkpoint_and_cache_options_act",
    "report_to": "test_tensorboard.py::test_event_file_holds_loss_parts_group_lrs_and_eval_metrics",
    "eval_strategy": f"{HERE}::test_evaluation_does_not_change_the_training",
    "eval_steps": f"{HERE}::test_evaluation_does_not_change_the_training",
    "eval_on_start": f"{HERE}::test_evaluation_does_not_change_the_training",
    "eval_delay": f"{HERE}::test_logging_checkpoint_and_cache_options_act",
    "per_device_eval_batch_size": f"{HERE}::test_loader_seed_ddp_and_log_options_reach_where_they_act",
    "save_strategy": "test_train.py::test_resume_after_a_kill_following_a_checkpoint",
    "save_steps": "test_train.py::test_resume_after_a_kill_following_a_checkpoint",
    "save_total_limit": f"{HERE}::test_logging_checkpoint_and_cache_options_act",
    "save_only_model": f"{HERE}::test_logging_checkpoint_and_cache_options_act",
    "push_to_hub": "test_hub_round_trip.py::test_every_pushed_revision_holds_a_loadable_model",
    "hub_model_id": "test_hub_round_trip.py::test_every_pushed_revision_holds_a_loadable_model",
    "hub_strategy": "test_hub_round_trip.py::test_every_pushed_revision_holds_a_loadable_model",
    "hub_always_push": "test_hub_round_trip.py::test_failed_uploads_are_reported",
    "hub_token": "test_hub_round_trip.py::test_every_pushed_revision_holds_a_loadable_model",
    "hub_private_repo": f"{HERE}::test_hub_private_repo_creates_a_private_repo",
    "load_best_model_at_end": f"{HERE}::test_best_model_selection_is_labelled_as_selected_on_the_test_split",
    "metric_for_best_model": f"{HERE}::test_best_model_selection_is_labelled_as_selected_on_the_test_split",
    "seed": f"{HERE}::test_loader_seed_ddp_and_log_options_reach_where_they_act",
    "data_seed": f"{HERE}::test_loader_seed_ddp_and_log_options_reach_where_they_act",
    "dataloader_num_workers": "test_train.py::test_worker_count_does_not_change_losses",
    "dataloader_pin_memory": f"{HERE}::test_loader_seed_ddp_and_log_options_reach_where_they_act",
    "dataloader_persistent_workers": f"{HERE}::test_loader_seed_ddp_and_log_options_reach_where_they_act",
    "dataloader_prefetch_factor": f"{HERE}::test_loader_seed_ddp_and_log_options_reach_where_they_act",
    "dataloader_multiprocessing_context": f"{HERE}::test_loader_seed_ddp_and_log_options_reach_where_they_act",
    "ddp_find_unused_parameters": f"{HERE}::test_loader_seed_ddp_and_log_options_reach_where_they_act",
    "ddp_bucket_cap_mb": f"{HERE}::test_loader_seed_ddp_and_log_options_reach_where_they_act",
    "ddp_broadcast_buffers": f"{HERE}::test_loader_seed_ddp_and_log_options_reach_where_they_act",
    "ddp_static_graph": f"{HERE}::test_loader_seed_ddp_and_log_options_reach_where_they_act",
    "resume_from_checkpoint": "test_train.py::test_resume_from_checkpoint_path",
    "local_rank": "test_train.py::test_one_and_two_processes_compute_the_same_run",
}


def _test_names(file: str) -> set[str]:
    tree = ast.parse((TESTS / file).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")}


def test_every_trainer_option_acts_or_is_refused():
    """A new Trainer field fails here until it is put in ACTING (with a test showing it act) or refused."""
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    unclassified = sorted(fields - set(ACTING) - set(REFUSED_TRAINER_OPTIONS))
    assert not unclassified, f"TrainingArguments fields neither shown acting nor refused: {unclassified}"
    assert not set(ACTING) & set(REFUSED_TRAINER_OPTIONS)
    assert not (set(ACTING) | set(REFUSED_TRAINER_OPTIONS)) - fields  # nothing stale
    for name, where in ACTING.items():
        file, test = where.split("::")
        assert test in _test_names(file), f"{name}: {where} does not exist"
    offered = {action.dest for action in build_parser()._actions}
    assert not offered & set(REFUSED_TRAINER_OPTIONS)
    assert set(ACTING) <= offered


@pytest.mark.parametrize("name", sorted(REFUSED_TRAINER_OPTIONS))
def test_a_refused_option_is_one_line_naming_what_to_use(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = train.cli(["--output-dir", str(tmp_path / "out"), "--synthetic-dir", str(tmp_path / "syn"),
                      f"--{name.replace('_', '-')}", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == f"train.py: error: --{name.replace('_', '-')} does nothing in train.py: " \
                     f"{REFUSED_TRAINER_OPTIONS[name]}"
    assert list(tmp_path.iterdir()) == []


def test_a_refused_option_in_a_recipe_file_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("preset: synthetic\nlabel_smoothing_factor: 0.1\n")
    code = train.cli(["--config", str(recipe), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(recipe) in err[0] and "--label-smoothing" in err[0], err


# ---- the optimizer ---------------------------------------------------------------------------------------------


def test_default_optimizer_is_the_authors_adam_and_is_recorded_as_such(tiny_dataset, tmp_path):
    """torch.optim.Adam with L2 weight decay in the gradient (not AdamW's decoupled decay), its betas / eps from the
    flags; one step of it by hand; training_args.json says "adam"."""
    trainer = _trainer(tiny_dataset, tmp_path, ["--adam-beta1", "0.8", "--adam-beta2", "0.99", "--adam-epsilon",
                                                "1e-6", "--weight-decay", "0.01", "--vision-tower-lr", "1e-4"])
    opt = trainer.create_optimizer()
    assert type(opt) is torch.optim.Adam
    assert opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["eps"] == 1e-6
    assert [g["name"] for g in opt.param_groups] == list(PARAM_GROUPS)
    assert all(g["weight_decay"] == 0.01 for g in opt.param_groups)
    params = [p for g in opt.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(params)]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    lrs = [g["lr"] for g in opt.param_groups for _ in g["params"]]
    for p, p0, g, lr in zip(params, before, grads, lrs):
        g = g + 0.01 * p0  # L2: the decay is part of the gradient the moments see
        m, v = 0.2 * g, 0.01 * g * g  # first step: (1 - beta) * g, (1 - beta2) * g^2
        step = lr * (m / 0.2) / ((v / 0.01).sqrt() + 1e-6)
        torch.testing.assert_close(p.detach(), p0 - step, rtol=1e-5, atol=1e-9)
    trainer.save_model(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "training_args.json").read_text())["optim"] == "adam"


def test_optim_chooses_the_optimizer_of_the_three_groups(tiny_dataset, tmp_path):
    trainer = _trainer(tiny_dataset, tmp_path, ["--optim", "sgd", "--optim-args", "momentum=0.9,nesterov=true"])
    opt = trainer.create_optimizer()
    assert type(opt) is torch.optim.SGD
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == list(PARAM_GROUPS)
    args = trainer.args
    assert groups["head"]["lr"] == args.learning_rate and groups["vision_tower"]["lr"] == args.vision_tower_lr
    assert groups["head_bias"]["lr"] == args.learning_rate * args.bias_lr_factor
    assert all(g["momentum"] == 0.9 and g["nesterov"] is True and g["weight_decay"] == args.weight_decay
               for g in groups.values())
    trainer.save_model(str(tmp_path / "saved"))
    args = json.loads((tmp_path / "saved" / "training_args.json").read_text())
    assert args["optim"] == "sgd" and args["optim_args"] == "momentum=0.9,nesterov=true"
    adamw = _trainer(tiny_dataset, tmp_path / "w", ["--optim", "adamw_torch"]).create_optimizer()
    assert type(adamw) is torch.optim.AdamW and [g["name"] for g in adamw.param_groups] == list(PARAM_GROUPS)


@pytest.mark.parametrize("argv, needle", [
    (["--optim", "adamw_torch", "--optim-args", "amsgrad=true"], "--optim-args amsgrad=true: --optim adamw_torch does "
                                                                 "not read it"),
    (["--optim", "sgd", "--optim-args", "weight_decay=0.1"], "set it with --weight-decay"),
    (["--optim", "sgd", "--optim-args", "momentm=0.9"], "--optim sgd (SGD) has no option momentm"),
    (["--optim-args", "betas=0.5"], "--adam-beta1 / --adam-beta2"),
    (["--optim-args", "amsgrad"], "expected key=value pairs"),
    (["--optim", "galore_adamw"], "--optim galore_adamw: "),
    (["--optim", "adam_w"], "--optim"),
])
def test_optimizer_options_it_cannot_apply_are_one_line_before_any_work(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = train.cli(["--output-dir", str(tmp_path / "out"), "--synthetic-dir", str(tmp_path / "syn"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("train.py: error: ") and needle in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_amsgrad_reaches_the_authors_adam(tiny_dataset, tmp_path):
    opt = _trainer(tiny_dataset, tmp_path, ["--optim-args", "amsgrad=true"]).create_optimizer()
    assert type(opt) is torch.optim.Adam and all(g["amsgrad"] is True for g in opt.param_groups)


def test_max_grad_norm_clips_the_update(tiny_dataset, tmp_path):
    """Plain SGD at a constant lr, no decay: one step moves each parameter by lr x its clipped gradient, so the
    gradient norm the step used is sqrt(sum |dp / lr|^2): at most --max-grad-norm with it, far above without."""
    norms = {}
    for clip in ("0", "1e-3"):
        trainer = _trainer(tiny_dataset, tmp_path / clip, [
            "--optim", "sgd", "--weight-decay", "0", "--lr-schedule", "trainer", "--lr-scheduler-type", "constant",
            "--max-grad-norm", clip, "--max-steps", "1", "--hdm-dropout", "0"])
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train()
        lrs = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}  # constant
        total = sum((((p.detach() - before[n]) / lrs[id(p)]) ** 2).sum().item()
                    for n, p in trainer.model.named_parameters() if id(p) in lrs)
        norms[clip] = math.sqrt(total)
    assert norms["1e-3"] == pytest.approx(1e-3, rel=5e-3)  # clip_grad_norm_ scales by max / (norm + 1e-6)
    assert norms["0"] > 100 * norms["1e-3"]


# ---- the schedule ----------------------------------------------------------------------------------------------


def test_trainer_schedule_options_act_under_lr_schedule_trainer(tiny_dataset, tmp_path):
    """Linear warm-up over --warmup-steps, then cosine with --lr-scheduler-kwargs' num_cycles (1.0: down and back up),
    for every group."""
    trainer = _trainer(tiny_dataset, tmp_path, ["--lr-schedule", "trainer", "--lr-scheduler-type", "cosine",
                                                "--warmup-steps", "2", "--lr-scheduler-kwargs", '{"num_cycles": 1.0}'])
    opt = trainer.create_optimizer()
    sched = trainer.create_scheduler(num_training_steps=10, optimizer=opt)
    bases = [g["initial_lr"] for g in opt.param_groups]
    assert bases == [trainer.args.learning_rate, trainer.args.learning_rate * trainer.args.bias_lr_factor,
                     trainer.args.vision_tower_lr]
    for step in range(10):
        if step < 2:
            factor = step / 2
        else:
            progress = (step - 2) / 8
            factor = 0.5 * (1 + math.cos(math.pi * 2 * 1.0 * progress))
        for g, base in zip(opt.param_groups, bases):
            assert g["lr"] == pytest.approx(base * factor, abs=1e-15), step
        opt.step()
        sched.step()


@pytest.mark.parametrize("argv, needle", [
    (["--lr-scheduler-type", "linear"], "--lr-scheduler-type does nothing under --lr-schedule demo_cosine"),
    (["--warmup-steps", "0"], "--warmup-steps does nothing under --lr-schedule demo_cosine"),
    (["--lr-scheduler-kwargs", "{}"], "--lr-scheduler-kwargs does nothing under --lr-schedule demo_cosine"),
    (["--lr-schedule", "demo_cosine_plain", "--lr-scheduler-type", "linear"], "--lr-schedule demo_cosine_plain"),
    (["--lr-schedule", "trainer", "--warmup-epochs", "10"], "--warmup-epochs does nothing under --lr-schedule trainer"),
    (["--lr-schedule", "trainer", "--min-lr-factor", "0.001"], "--min-lr-factor does nothing"),
    (["--lr-schedule", "demo_cosine_plain", "--lr-noise-seed", "42"], "--lr-noise-seed does nothing"),
])
def test_a_typed_schedule_option_is_refused_whatever_its_value(argv, needle, tmp_path, capsys, monkeypatch):
    """The values here are the defaults: typed, they are still refused where the schedule does not read them."""
    monkeypatch.chdir(tmp_path)
    code = train.cli(["--output-dir", str(tmp_path / "out"), "--synthetic-dir", str(tmp_path / "syn"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_lr_schedule_trainer_keeps_the_presets_per_epoch_values_unused_and_quiet(tmp_path):
    """The preset sets --warmup-epochs; --lr-schedule trainer is not refused for what the user did not type."""
    run = parse_args(["--output-dir", str(tmp_path / "out"), "--synthetic-dir", str(tmp_path / "syn"),
                      "--lr-schedule", "trainer"])
    assert run.training.lr_schedule == "trainer"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the refusal without a GPU is tested below")
def test_tf32_acts_on_a_gpu_and_is_refused_without_one(tmp_path):
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        parse_args(["--output-dir", str(tmp_path / "out"), "--tf32", "true"])
        assert torch.backends.cuda.matmul.allow_tf32 is True
        parse_args(["--output-dir", str(tmp_path / "out"), "--tf32", "false"])
        assert torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU it acts (tested above)")
def test_tf32_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = train.cli(["--output-dir", str(tmp_path / "out"), "--tf32", "true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--tf32" in err[0], err


# ---- logging, evaluation timing, checkpoints -------------------------------------------------------------------


def test_logging_checkpoint_and_cache_options_act(tiny_dataset, tmp_path, capfd, monkeypatch):
    import transformers.trainer

    cache_clears = []
    monkeypatch.setattr(transformers.trainer, "clear_device_cache", lambda *a, **k: cache_clears.append(1))
    out = tmp_path / "run"
    train.main([*TINY, "--dataset", tiny_dataset, "--output-dir", str(out), "--max-steps", "4",
                "--logging-steps", "3", "--logging-first-step", "true", "--logging-nan-inf-filter", "false",
                "--eval-strategy", "steps", "--eval-steps", "1", "--eval-delay", "3",
                "--save-strategy", "steps", "--save-steps", "1", "--save-total-limit", "2", "--save-only-model",
                "--torch-empty-cache-steps", "2", "--skip-memory-metrics", "false", "--disable-tqdm", "false"])
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 3]  # first step, then every 3rd
    assert [h["step"] for h in history if "eval_mAP" in h] == [3, 4, 4]  # from step 3 on (the last: train.py's)
    assert any("train_mem_cpu_alloc_delta" in h for h in history)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert (out / "checkpoint-4" / "model.safetensors").is_file() and not (out / "checkpoint-4" / "optimizer.pt").exists()
    assert len(cache_clears) == 2  # steps 2 and 4
    assert "4/4" in capfd.readouterr().err  # the progress bar


def test_loader_seed_ddp_and_log_options_reach_where_they_act(tiny_dataset, tmp_path, monkeypatch):
    import transformers
    from mmreid import inference

    trainer = _trainer(tiny_dataset, tmp_path, [
        "--dataloader-num-workers", "1", "--dataloader-persistent-workers", "true", "--dataloader-prefetch-factor",
        "3", "--dataloader-multiprocessing-context", "spawn", "--dataloader-pin-memory", "true",
        "--ddp-find-unused-parameters", "false", "--ddp-bucket-cap-mb", "5", "--ddp-broadcast-buffers", "false",
        "--ddp-static-graph", "true", "--log-level", "error", "--per-device-eval-batch-size", "7"])
    loader = trainer.get_train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers and loader.prefetch_factor == 3
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    assert loader.pin_memory == torch.cuda.is_available()  # pinned pages only serve a GPU
    ddp = trainer.accelerator.ddp_handler  # the kwargs accelerate gives DistributedDataParallel
    assert (ddp.find_unused_parameters, ddp.bucket_cap_mb, ddp.broadcast_buffers, ddp.static_graph) == (False, 5, False,
                                                                                                       True)
    assert transformers.utils.logging.get_verbosity() == transformers.logging.ERROR
    transformers.utils.logging.set_verbosity_warning()

    sizes = []
    real_loader = inference.DataLoader
    monkeypatch.setattr(inference, "DataLoader", lambda *a, **k: sizes.append(k["batch_size"]) or real_loader(*a, **k))
    trainer.evaluate()
    assert sizes == [7, 7]  # query and gallery

    def first_batch_and_weights(seed, data_seed):
        t = _trainer(tiny_dataset, tmp_path / f"{seed}-{data_seed}", ["--seed", str(seed), "--data-seed", str(data_seed)])
        labels = next(iter(t.get_batch_sampler()))
        head = next(p for n, p in t.model.named_parameters() if p.ndim == 2 and not n.startswith("vision_tower"))
        return labels, head.detach().clone()

    batch_a, weights_a = first_batch_and_weights(1, 7)
    batch_b, weights_b = first_batch_and_weights(2, 7)
    batch_c, _ = first_batch_and_weights(1, 8)
    assert batch_a == batch_b and batch_a != batch_c  # --data-seed alone decides the batches
    assert not torch.equal(weights_a, weights_b)  # --seed decides the initialisation


def test_evaluation_does_not_change_the_training(tiny_dataset, tmp_path):
    """HDM dropout on: a run evaluated at its start and every 2 steps ends with the weights (bit for bit) and the
    losses of the same run never evaluated (evaluation draws from the random streams; they are restored)."""
    common = [*TINY, "--dataset", tiny_dataset, "--max-steps", "4", "--hdm-dropout", "0.3"]
    quiet, evaluated = tmp_path / "quiet", tmp_path / "evaluated"
    train.main([*common, "--output-dir", str(quiet), "--logging-strategy", "no"])
    train.main([*common, "--output-dir", str(evaluated), "--eval-strategy", "steps", "--eval-steps", "2",
                "--eval-on-start", "true"])
    history = json.loads((evaluated / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "eval_mAP" in h] == [0, 2, 4, 4]
    assert not [h for h in json.loads((quiet / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    a, b = load_file(quiet / "model.safetensors"), load_file(evaluated / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


# ---- best-model selection --------------------------------------------------------------------------------------


def test_best_model_selection_is_labelled_as_selected_on_the_test_split(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "best"
    result = train.main([*TINY, "--dataset", tiny_dataset, "--output-dir", str(out), "--max-steps", "4",
                         "--eval-strategy", "steps", "--eval-steps", "2", "--save-strategy", "steps", "--save-steps",
                         "2", "--load-best-model-at-end", "--metric-for-best-model", "Rank-1"])
    label = "best checkpoint by Rank-1 selected on TEST split (optimistic)"
    assert result["selection"] == label
    assert json.loads((out / "final_metrics.json").read_text())["selection"] == label
    assert label in (out / "README.md").read_text()
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"[{label}] ")
    state = json.loads((out / "trainer_state.json").read_text())
    *periodic, final = [h["eval_Rank-1"] for h in state["log_history"] if "eval_Rank-1" in h]  # steps 2, 4; the end
    assert len(periodic) == 2 and state["best_metric"] == max(periodic) and final == pytest.approx(max(periodic))


@pytest.mark.parametrize("argv, needle", [
    (["--load-best-model-at-end", "--metric-for-best-model", "mAP", "--eval-strategy", "epoch", "--save-strategy",
      "steps"], "--save-strategy steps must equal --eval-strategy epoch"),
    (["--load-best-model-at-end", "--eval-strategy", "epoch"], "--metric-for-best-model must be one of mAP"),
    (["--load-best-model-at-end", "--metric-for-best-model", "loss", "--eval-strategy", "epoch"], "got 'loss'"),
    (["--select-best-on-test"], "--select-best-on-test needs periodic evaluation"),
    (["--load-best-model-at-end", "--metric-for-best-model", "mAP", "--eval-strategy", "steps", "--eval-steps", "3",
      "--save-strategy", "steps", "--save-steps", "4"], "multiple"),
])
def test_best_model_options_that_cannot_work_are_one_complete_line(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = train.cli(["--output-dir", str(tmp_path / "out"), "--synthetic-dir", str(tmp_path / "syn"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0] and not err[0].endswith("but found"), err
    assert list(tmp_path.iterdir()) == []


# ---- the Hub ---------------------------------------------------------------------------------------------------


def test_hub_private_repo_creates_a_private_repo(tiny_dataset, tmp_path):
    from fake_hub import FakeHub

    with FakeHub() as fake:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_ENDPOINT=fake.url, HF_HUB_OFFLINE="0", HF_TOKEN="hf_dummy", HF_HOME=str(tmp_path / "hf_home"),
                   HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1")
        for private in ("true", "false"):
            proc = subprocess.run([sys.executable, str(REPO / "train.py"), *TINY, "--dataset", tiny_dataset,
                                   "--max-steps", "1", "--output-dir", str(tmp_path / private), "--push-to-hub",
                                   "--hub-model-id", f"tester/run-{private}", "--hub-strategy", "end",
                                   "--hub-private-repo", private, "--report-to", "none"],
                                  env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
        assert fake.repos[("model", "tester/run-true")].private is True
        assert fake.repos[("model", "tester/run-false")].private is False
