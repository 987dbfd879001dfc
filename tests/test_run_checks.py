"""Checks train.py makes about the run as a whole, before it trains: --resume into a folder holding another model's
run (one line naming both, nothing loaded), and a launcher that started fewer processes than it was asked for."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_dataset, free_port, tiny_train_args

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train  # noqa: E402
from mmreid.training.distributed import launcher_shortfall  # noqa: E402

COMMON = ["--num-identities", "3", "--num-instances", "2", "--per-device-eval-batch-size", "32", "--max-steps", "2",
          "--save-strategy", "steps", "--save-steps", "2"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("synthetic"), seed=1, num_train_ids=8, num_test_ids=4,
                              images_per_id=5)


@pytest.fixture(scope="module")
def demo_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-run") / "out"
    train.main([*tiny_train_args("demo"), *COMMON, "--dataset", tiny_dataset, "--output-dir", str(out)])
    assert (out / "checkpoint-2" / "model.safetensors").is_file()
    return out


def _snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("argv, needles", [
    (tiny_train_args("next"), ["model demo_reid vs next_reid"]),
    ([*tiny_train_args("demo"), "--image-size", "64", "32"], ["image size 32x16 vs 64x32"]),
    ([*tiny_train_args("demo"), "--use-atmoe", "false"], ["do not fit the model", "not in this model"]),
])
def test_resume_into_another_models_run_is_one_line_naming_both(demo_run, tiny_dataset, argv, needles, capsys):
    before = _snapshot(demo_run)
    code = train.cli([*argv, *COMMON, "--max-steps", "4", "--dataset", tiny_dataset, "--output-dir", str(demo_run),
                      "--resume"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert code == 2 and len(err) == 1 and err[0].startswith("train.py: error: --resume: "), err
    assert str(demo_run / "checkpoint-2") in err[0] and all(n in err[0] for n in needles), err
    assert _snapshot(demo_run) == before  # nothing written, nothing replaced


def test_resume_into_a_run_with_other_identities_is_one_line(demo_run, tmp_path, capsys):
    other = build_tiny_dataset(tmp_path / "other", seed=2, num_train_ids=6, num_test_ids=4, images_per_id=5)
    code = train.cli([*tiny_train_args("demo"), *COMMON, "--max-steps", "4", "--dataset", other,
                      "--output-dir", str(demo_run), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "identities 8 vs 6" in err[-1], err


def test_the_shortfall_line_names_the_processes_asked_and_what_to_use():
    env = {"ACCELERATE_DYNAMO_BACKEND": "NO", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    line = launcher_shortfall(1, env, ["accelerate", "launch", "--num_processes", "2", "--cpu", "train.py"])
    assert "asked for 2 processes" in line and "accelerate_configs/cpu_2proc.yaml" in line
    assert "torchrun --nproc_per_node 2" in line
    assert launcher_shortfall(2, {**env, "WORLD_SIZE": "2"}, []) is None  # torchrun / multi-GPU launcher: all there
    assert launcher_shortfall(1, {}, []) is None  # python train.py
    assert launcher_shortfall(1, {"ACCELERATE_DYNAMO_BACKEND": "NO"}, []) is None  # accelerate launch, 1 process


def test_accelerate_launch_cpu_with_two_processes_says_so_at_the_start(tiny_dataset, tmp_path):
    """The real launcher: `accelerate launch --num_processes 2 --cpu` starts one process; the run says it before
    training, in one line pointing to the 2-process config, and trains as one process."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(REPO / "train.py"), *tiny_train_args(), *COMMON, "--dataset", tiny_dataset, "--output-dir", str(out),
           "--logging-steps", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    said = [i for i, line in enumerate(lines) if "asked for 2 processes but started 1" in line]
    assert len(said) == 1 and "accelerate_configs/cpu_2proc.yaml" in lines[said[0]]
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 1
    assert not any("triple" in line or "shards" in line for line in lines[:said[0]])  # before data and model
