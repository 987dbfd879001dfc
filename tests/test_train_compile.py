"""`train.py --torch-compile` is the same training as eager: the same loss at every logged step over 50 steps (CPU,
fp32, inductor), the same checkpoint files, and a compiled run resumes from its checkpoint to the weights of an
uninterrupted one."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_dataset, tiny_train_args

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train  # noqa: E402

STEPS, SAVE_AT = 50, 25


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An eager and a compiled run of the same 50 steps, each saving a checkpoint at step 25."""
    base = tmp_path_factory.mktemp("compile")
    dataset = build_tiny_dataset(base, seed=1, num_train_ids=8, num_test_ids=4, images_per_id=5)
    common = [*tiny_train_args(), "--dataset", dataset, "--num-identities", "3", "--num-instances", "2",
              "--max-steps", str(STEPS), "--logging-steps", "1", "--save-strategy", "steps",
              "--save-steps", str(SAVE_AT), "--save-total-limit", "3"]
    out = {}
    for name, extra in (("eager", []), ("compiled", ["--torch-compile"])):
        out[name] = base / name
        train.main([*common, *extra, "--output-dir", str(out[name])])
    return common, out


def logged_losses(output_dir: Path) -> dict[int, float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_compiled_losses_match_eager_at_every_logged_step(runs):
    _, out = runs
    eager, compiled = logged_losses(out["eager"]), logged_losses(out["compiled"])
    assert list(eager) == list(compiled) == list(range(1, STEPS + 1))
    worst = max(abs(compiled[s] - eager[s]) / abs(eager[s]) for s in eager)
    assert worst < 1e-3, {s: (eager[s], compiled[s]) for s in eager}


def test_compiled_run_writes_the_eager_checkpoint_format(runs):
    _, out = runs
    for folder in ("", f"checkpoint-{SAVE_AT}", f"checkpoint-{STEPS}"):
        eager, compiled = out["eager"] / folder, out["compiled"] / folder
        assert sorted(p.name for p in compiled.iterdir()) == sorted(p.name for p in eager.iterdir()), folder
        a, b = weights(eager), weights(compiled)
        assert {k: v.shape for k, v in b.items()} == {k: v.shape for k, v in a.items()}  # no `_orig_mod.` prefix
    config = json.loads((out["compiled"] / "config.json").read_text())
    assert config["model_type"] == "demo_reid" and "auto_map" in config


def test_compiled_run_resumes_to_the_uninterrupted_weights(runs, tmp_path):
    common, out = runs
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out["compiled"] / f"checkpoint-{SAVE_AT}", resumed / f"checkpoint-{SAVE_AT}")
    result = train.main([*common, "--torch-compile", "--output-dir", str(resumed), "--resume"])
    assert result["global_step"] == STEPS
    full, again = logged_losses(out["compiled"]), logged_losses(resumed)  # the history up to 25 is the checkpoint's
    assert list(again) == list(range(1, STEPS + 1))
    for step, loss in again.items():
        assert loss == pytest.approx(full[step], rel=1e-5), step
    a, b = weights(out["compiled"]), weights(resumed)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
