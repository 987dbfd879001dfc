"""benchmarks/gpu_check.py runs on CPU as a dry run (toy sizes): every step of the GPU check starts and its report is
written, so the script is known to work before it meets a GPU. Without --dry-run and without CUDA it refuses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def run(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900,
                          cwd=tmp_path, env=env)


def test_dry_run_runs_every_step_and_writes_the_report(tmp_path):
    process = run(["--dry-run", "--output-dir", str(tmp_path / "out")], tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "cuda-dry-run.json").read_text())
    steps = {(r["amp"], r["compile"], r["mode"]) for r in result["steps"]}
    assert steps == {(amp, compiled, mode) for amp in ("bfloat16", "float16") for compiled in (False, True)
                     for mode in ("train", "inference")}
    train = [r for r in result["steps"] if r["mode"] == "train"]
    assert all(r["loss_finite"] for r in train)
    assert [r["grad_scale"] is not None for r in train] == [r["amp"] == "float16" for r in train]  # fp16: scaled
    towers = {(r["tower"], r["amp"], r["compile"], r["mode"]) for r in result["tower_steps"]}
    assert towers == {("dinov3_vit", "bfloat16", compiled, mode) for compiled in (False, True)
                      for mode in ("train", "inference")}
    assert all(r["loss_finite"] for r in result["tower_steps"] if r["mode"] == "train")
    assert result["ranking"]["equal"] and result["ranking"]["max_difference"] == 0.0
    assert [r["workers"] for r in result["decode"]["rows"]] == [1, 2]
    report = (tmp_path / "out" / "cuda-dry-run.md").read_text()
    assert report.startswith("# GPU check (issue 20) - DRY RUN on CPU") and "| float16 | True | train |" in report
    assert "| dinov3_vit | bfloat16 | True | train |" in report
    assert not (tmp_path / "out" / "cuda.md").exists()  # a dry run never stands in for the real results


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_without_cuda_it_refuses_in_one_line(tmp_path):
    process = run(["--output-dir", str(tmp_path / "out")], tmp_path)
    assert process.returncode == 1
    assert process.stderr.strip() == ("gpu_check.py: no CUDA device is visible; run it on a GPU machine, or pass "
                                      "--dry-run")
    assert not (tmp_path / "out").exists()
