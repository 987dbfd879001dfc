"""Faults and bad input (issue 18): real signals mid-epoch then --resume, the output-directory lock, a full disk,
--overwrite-output-dir, recipe values, output locations, truncated weights, the files a run leaves."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_dataset, free_port, tiny_train_args

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train  # noqa: E402

TINY = [*tiny_train_args(), "--num-identities", "4", "--num-instances", "2", "--per-device-eval-batch-size", "32",
        "--logging-steps", "1", "--hdm-dropout", "0"]
STEPS = 8


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    # 8 identities x 5 images, P x K = 4 x 2: 4 optimizer steps per epoch, so step 5 is mid-epoch
    return build_tiny_dataset(tmp_path_factory.mktemp("synthetic"), seed=3, num_train_ids=8, num_test_ids=4,
                              images_per_id=5)


def _common(dataset, *extra):
    return [*TINY, "--dataset", dataset, "--max-steps", str(STEPS), "--save-strategy", "no", *extra]


# Sends itself (or, under torchrun, only rank SIGNAL_RANK) a real signal in the middle of optimizer step
# SIGNAL_STEP + 1, while the forward/backward of that step runs.
SIGNALLER = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import train
from demo_reid.training.trainer import ReIDTrainer

SIGNAL, SIGNAL_STEP, SIGNAL_RANK = signal.{signal}, {step}, {rank!r}
training_step = ReIDTrainer.training_step


def signalling_step(self, *args, **kwargs):
    mine = SIGNAL_RANK is None or os.environ.get("RANK", "0") == str(SIGNAL_RANK)
    if mine and self.state.global_step == SIGNAL_STEP and not getattr(self, "_signalled", False):
        self._signalled = True
        os.kill(os.getpid(), SIGNAL)
    return training_step(self, *args, **kwargs)


ReIDTrainer.training_step = signalling_step
sys.exit(train.cli(sys.argv[1:]))
"""


def _env(threads: int | None = None) -> dict:
    # bit-for-bit comparisons need one thread count for every run compared (BLAS reductions depend on it)
    return dict(os.environ, OMP_NUM_THREADS=str(threads or torch.get_num_threads()))


def _run_signalled(argv, tmp_path, sig="SIGTERM", step=4, rank=None, launcher=(sys.executable,), threads=None):
    script = tmp_path / "signalled.py"
    script.write_text(SIGNALLER.format(repo=str(REPO), signal=sig, step=step, rank=rank))
    return subprocess.run([*launcher, str(script), *argv], cwd=tmp_path, env=_env(threads), capture_output=True,
                          text=True, timeout=600)


def _assert_same_weights(dir_a, dir_b):
    from safetensors.torch import load_file

    a, b = load_file(Path(dir_a) / "model.safetensors"), load_file(Path(dir_b) / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "out"
    result = train.main([*_common(tiny_dataset), "--output-dir", str(out)])
    assert result["global_step"] == STEPS
    return out


@pytest.mark.parametrize("sig, extra", [("SIGTERM", []), ("SIGUSR1", ["--checkpoint-on-signal", "SIGTERM", "SIGUSR1"])])
def test_signal_mid_epoch_checkpoints_exits_and_resumes_bit_identically(tiny_dataset, tmp_path, uninterrupted, sig,
                                                                          extra):
    out = tmp_path / "preempted"
    proc = _run_signalled([*_common(tiny_dataset, *extra), "--output-dir", str(out)], tmp_path, sig=sig, step=4)
    signum = signal.Signals[sig].value
    assert proc.returncode == 128 + signum, proc.stderr[-3000:]  # 143 for SIGTERM, 138 for SIGUSR1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: stopped by {sig} after step 5;") and "--resume" in last, last
    # step 5 (the one running when the signal came) finished and was checkpointed complete, mid-epoch
    checkpoint = out / "checkpoint-5"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == 5 and state["epoch"] == 1.25
    assert not (out / ".incomplete").exists() and not (out / "model.safetensors").exists()
    assert not (out / ".train.lock").exists()  # released
    resumed = train.main([*_common(tiny_dataset), "--output-dir", str(out), "--resume"])
    assert resumed["global_step"] == STEPS
    _assert_same_weights(uninterrupted, out)


def test_sigusr1_is_not_caught_unless_asked_for(tiny_dataset, tmp_path):
    out = tmp_path / "usr1"
    proc = _run_signalled([*_common(tiny_dataset), "--output-dir", str(out)], tmp_path, sig="SIGUSR1", step=2)
    assert proc.returncode == -signal.SIGUSR1  # the default action: the process ends, nothing is checkpointed
    assert not list(out.glob("checkpoint-*"))


def test_ctrl_c_is_one_line(tiny_dataset, tmp_path):
    out = tmp_path / "sigint"
    proc = _run_signalled([*_common(tiny_dataset), "--output-dir", str(out)], tmp_path, sig="SIGINT", step=2)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("train.py: interrupted (Ctrl-C); --resume continues from the last "
                                                   "complete checkpoint")
    assert not (out / ".train.lock").exists()


def test_sigterm_on_one_of_two_processes_stops_both_at_one_step(tiny_dataset, tmp_path):
    """torchrun, 2 gloo processes: only rank 1 gets SIGTERM; the all-reduced flag makes both finish step 5 and
    write one complete checkpoint; --resume (2 processes) ends with an uninterrupted 2-process run's weights."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    common = _common(tiny_dataset)
    full = tmp_path / "full2"
    proc = subprocess.run([*torchrun, "--master_port", str(free_port()), str(REPO / "train.py"), *common,
                           "--output-dir", str(full)], cwd=tmp_path, env=_env(1), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "preempted2"
    proc = _run_signalled([*common, "--output-dir", str(out)], tmp_path, sig="SIGTERM", step=4, rank=1,
                          launcher=[*torchrun, "--master_port", str(free_port())], threads=1)
    assert proc.returncode != 0 and "exitcode  : 143" in proc.stderr, proc.stderr[-3000:]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-5"]
    assert json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())["global_step"] == 5
    assert sorted(p.name for p in (out / "checkpoint-5").glob("rng_state*.pth")) == ["rng_state_0.pth",
                                                                                     "rng_state_1.pth"]
    assert "train.py: stopped by SIGTERM after step 5;" in proc.stderr
    proc = subprocess.run([*torchrun, "--master_port", str(free_port()), str(REPO / "train.py"), *common,
                           "--output-dir", str(out), "--resume"], cwd=tmp_path, env=_env(1), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_weights(full, out)
