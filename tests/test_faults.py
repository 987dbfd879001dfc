"""Faults and bad input (issue 18): real signals mid-epoch then --resume, the output-directory lock, a full disk,
--overwrite-output-dir, recipe values, output locations, truncated weights, the files a run leaves."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
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
from mmreid.training.trainer import ReIDTrainer

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
                          text=True, timeout=600, preexec_fn=_default_signal_handling)


def _default_signal_handling():
    """The child starts as from a terminal: a signal that something earlier in this test process set to be ignored
    (an ignored disposition survives exec) would otherwise be ignored by the child too, and the run not stop."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)


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


# ------------------------------------------------------------------------------------------ one run per folder
HOLDER = """
import os, sys, time
sys.path.insert(0, {repo!r})
import train
from mmreid.training.trainer import ReIDTrainer

training_step = ReIDTrainer.training_step


def waiting_step(self, *args, **kwargs):
    if self.state.global_step == 1:  # holds the output directory until the test lets it go on
        open({started!r}, "w").close()
        while not os.path.exists({go!r}):
            time.sleep(0.05)
    return training_step(self, *args, **kwargs)


ReIDTrainer.training_step = waiting_step
sys.exit(train.cli(sys.argv[1:]))
"""


def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "shared"
    started, go = tmp_path / "started", tmp_path / "go"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(repo=str(REPO), started=str(started), go=str(go)))
    first = subprocess.Popen([sys.executable, str(script), *_common(tiny_dataset), "--max-steps", "3",
                              "--output-dir", str(out)], cwd=tmp_path, env=_env(1), stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            if started.exists() or first.poll() is not None:
                break
            __import__("time").sleep(0.1)
        assert started.exists(), first.stderr.read()[-3000:]
        before = sorted(p.name for p in out.iterdir())
        assert train.cli([*_common(tiny_dataset), "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"process {first.pid} on" in err[0] and "in use by another train.py run" in err[0]
        assert sorted(p.name for p in out.iterdir()) == before  # the second run wrote nothing
    finally:
        go.touch()
        first.wait(timeout=600)
    assert first.returncode == 0
    assert (out / "model.safetensors").is_file() and not (out / ".train.lock").exists()


def test_a_stale_lock_is_taken_over(tiny_dataset, tmp_path, caplog):
    out = tmp_path / "stale"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".train.lock").write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": dead.pid,
                                                 "started": 0}))
    with caplog.at_level("WARNING"):
        result = train.main([*_common(tiny_dataset), "--max-steps", "1", "--output-dir", str(out)])
    assert result["global_step"] == 1
    assert f"taking over the lock of process {dead.pid}" in caplog.text
    assert not (out / ".train.lock").exists()


# ------------------------------------------------------------------------------------------ work is not lost
def test_overwrite_deletes_the_old_checkpoints_only_once_the_new_run_is_valid(tiny_dataset, tmp_path, capsys,
                                                                                  caplog):
    out = tmp_path / "previous"
    train.main([*_common(tiny_dataset), "--max-steps", "2", "--save-strategy", "steps", "--save-steps", "1",
                "--save-total-limit", "3", "--output-dir", str(out)])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-2").is_dir()
    capsys.readouterr()
    # a run that cannot start (P above the dataset's 8 identities) touches nothing
    assert train.cli([*_common(tiny_dataset), "--output-dir", str(out), "--overwrite-output-dir",
                      "--num-identities", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num-identities 10" in err[0] and "has 8 identities" in err[0], err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    with caplog.at_level("WARNING"):
        result = train.main([*_common(tiny_dataset), "--max-steps", "1", "--output-dir", str(out),
                             "--overwrite-output-dir"])
    assert result["global_step"] == 1 and not list(out.glob("checkpoint-*"))
    assert f"--overwrite-output-dir: deleted checkpoint-1, checkpoint-2 from {out}" in caplog.text


def test_a_full_disk_is_one_line_and_the_earlier_checkpoint_survives(tiny_dataset, tmp_path, capsys, monkeypatch):
    """A real 20 MB tmpfs as --output-dir, filled up after checkpoint-3 (a simulated ENOSPC where mounting is not
    allowed): the save of checkpoint-6 fails; one line names the folder and the space left; checkpoint-3 stays
    complete, nothing half-written stays, and --resume finishes the run once there is space again."""
    import errno
    import shutil

    from mmreid.training.trainer import ReIDTrainer

    save_checkpoint = ReIDTrainer._save_checkpoint
    filler = tmp_path / "disk" / "filler"
    with conftest_mount(tmp_path / "disk") as disk:
        if os.environ.get("DEMO_REID_TEST_NO_MOUNT"):  # exercise the fallback where mounting is allowed
            disk = None
        out = (disk or tmp_path / "disk") / "run"

        def filling_save(self, model, trial):
            if self.state.global_step == 6 and disk is None:  # simulated: the first write of checkpoint-6 fails
                def no_space(*args, **kwargs):
                    raise OSError(errno.ENOSPC, "No space left on device")
                monkeypatch.setattr("transformers.modeling_utils.safe_save_file", no_space)
            save_checkpoint(self, model, trial)
            if self.state.global_step == 3 and disk is not None:
                free = shutil.disk_usage(disk).free
                with open(filler, "wb") as f:  # leave 64 KiB: less than a checkpoint
                    f.write(b"\0" * (free - 64 * 1024))

        monkeypatch.setattr(ReIDTrainer, "_save_checkpoint", filling_save)
        common = [*_common(tiny_dataset), "--max-steps", "6", "--save-strategy", "steps", "--save-steps", "3"]
        assert train.cli([*common, "--output-dir", str(out)]) == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines()
               if line.strip() and "Writing model shards" not in line]  # the Trainer's progress bar
        assert len(err) == 1 and err[0].startswith(f"train.py: error: No space left on device writing to {out} ("), err
        assert " free of " in err[0] and "Traceback" not in err[0]
        assert (out / "checkpoint-3" / "trainer_state.json").is_file()
        assert not (out / "checkpoint-6").exists() and not (out / ".incomplete" / "checkpoint-6").exists()
        assert not (out / ".train.lock").exists()
        if disk is not None:
            filler.unlink()
        monkeypatch.setattr(ReIDTrainer, "_save_checkpoint", save_checkpoint)
        monkeypatch.undo()
        resumed = train.main([*common, "--output-dir", str(out), "--resume"])
        assert resumed["global_step"] == 6


def conftest_mount(path):
    from conftest import mounted_tmpfs

    return mounted_tmpfs(path, size="20m")


# ------------------------------------------------------------------------------------------ checks before work
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0, got -1.0"),
        (["--vision-tower-lr", "-1"], "--vision-tower-lr must be a finite number >= 0, got -1.0"),
        (["--bias-lr-factor", "nan"], "--bias-lr-factor must be a finite number >= 0"),
        (["--num-train-epochs", "0"], "--num-train-epochs must be > 0"),
        (["--num-instances", "1"], "--num-instances (K) must be >= 2"),
        (["--checkpoint-on-signal", "SIGKILL"], "--checkpoint-on-signal SIGKILL"),
        (["--config", "{bad_types}"], "option num_identities: expected int, got [4, 5]"),
        (["--config", "{bad_yaml}"], "not valid YAML at line 2"),
        (["--config", "{bad_mapping}"], "option learning_rate: expected float, got {'a': 1}"),
        (["--output-dir", "{a_file}"], "is a file; expected a folder"),
        (["--output-dir", "{a_file}/sub"], "lies under the file"),
    ],
)
def test_bad_recipe_values_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch, argv, needle):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "bad_types.yaml").write_text("num_identities: [4, 5]\n")
    (tmp_path / "bad_yaml.yaml").write_text("num_identities: 4\n\tlearning_rate: 1\n")
    (tmp_path / "bad_mapping.yaml").write_text("learning_rate: {a: 1}\n")
    (tmp_path / "a_file").write_text("not a folder")
    names = {"bad_types": tmp_path / "bad_types.yaml", "bad_yaml": tmp_path / "bad_yaml.yaml",
             "bad_mapping": tmp_path / "bad_mapping.yaml", "a_file": tmp_path / "a_file"}
    argv = [a.format(**names) for a in argv]
    monkeypatch.chdir(work)
    extra = [] if "--output-dir" in argv else ["--output-dir", str(work / "out")]
    code = train.cli([*extra, "--synthetic-dir", str(work / "syn"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("train.py: error: ") and needle in err[0], err
    assert list(work.iterdir()) == []


def test_read_only_output_dir_is_refused_before_any_work(read_only_dir, tmp_path, capsys):
    code = train.cli(["--output-dir", str(read_only_dir / "out"), "--synthetic-dir", str(tmp_path / "syn")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"--output-dir {read_only_dir / 'out'}: cannot write in {read_only_dir}" in err[0]
    assert not (tmp_path / "syn").exists()  # refused before the synthetic set is built


# ------------------------------------------------------------------------------------------ the other entry points
def _eval(*argv):
    import eval as eval_script

    return eval_script.main([*map(str, argv), "--no-progress", "--no-complexity"])


def _export(*argv):
    sys.path.insert(0, str(REPO / "data_scripts"))
    import export_onnx

    return export_onnx.main([*map(str, argv)])


def _one_line(capsys, prefix):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(prefix), err
    return err[0]


@pytest.fixture(scope="module")
def truncated_model(uninterrupted, tmp_path_factory):
    import shutil

    folder = tmp_path_factory.mktemp("truncated") / "model"
    shutil.copytree(uninterrupted, folder)
    weights = folder / "model.safetensors"
    with weights.open("r+b") as f:  # a copy cut short
        f.truncate(weights.stat().st_size // 2)
    return folder


def test_eval_checks_its_output_before_extracting_features(uninterrupted, tiny_dataset, read_only_dir, tmp_path,
                                                           capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert _eval("--model", uninterrupted, "--dataset", tiny_dataset, "--output", a_file) == 2
    assert "--output" in _one_line(capsys, f"eval.py: error: --output {a_file} is a file")
    assert _eval("--model", uninterrupted, "--dataset", tiny_dataset, "--output", read_only_dir / "eval") == 2
    assert f"cannot write in {read_only_dir}" in _one_line(capsys, "eval.py: error: --output")
    assert _eval("--model", uninterrupted, "--dataset", tiny_dataset, "--visualize", "--num-visualize", "1000",
                 "--output", tmp_path / "e") == 2
    assert "--num-visualize 1000: expected 1 to 64" in _one_line(capsys, "eval.py: error:")
    assert not (tmp_path / "e").exists()


def test_truncated_weights_are_one_line_in_eval_export_and_automodel(truncated_model, tiny_dataset, tmp_path,
                                                                     capsys):
    assert _eval("--model", truncated_model, "--dataset", tiny_dataset, "--output", tmp_path / "e") == 2
    line = _one_line(capsys, "eval.py: error: ")
    assert f"--model {truncated_model}: model.safetensors is incomplete or corrupt" in line
    assert _export("--model", truncated_model, "--output", tmp_path / "m.onnx") == 2
    assert "model.safetensors is incomplete or corrupt" in _one_line(capsys, "export_onnx.py: error: ")
    # AutoModel in a fresh process: the checkpoint's own code names the folder
    code = ("import sys\nfrom transformers import AutoModel\n"
            f"AutoModel.from_pretrained({str(truncated_model)!r}, trust_remote_code=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert f"OSError: {truncated_model}: the safetensors weights are incomplete or corrupt" in proc.stderr


def test_export_checks_its_output_before_loading(uninterrupted, read_only_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert _export("--model", uninterrupted, "--output", read_only_dir / "m.onnx") == 2
    assert f"cannot write in {read_only_dir}" in _one_line(capsys, "export_onnx.py: error: --output")
    assert _export("--model", uninterrupted, "--output", tmp_path / "m.onx") == 2
    assert "expected a .onnx file name" in _one_line(capsys, "export_onnx.py: error: --output")
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*.tmp"))


def test_captions_check_their_output_before_any_request(read_only_dir, tmp_path, capsys):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from mmreid.data.synthetic import make_synthetic

    dataset = make_synthetic("RGBNT201", tmp_path / "raw", seed=0, num_train_ids=2, num_test_ids=2, images_per_id=4,
                             image_size=(32, 16))
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # a paid request: counted, never answered well
            requests.append(self.path)
            self.send_response(500)
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        sys.path.insert(0, str(REPO / "data_scripts"))
        import generate_captions

        code = generate_captions.main(["--dataset", str(dataset), "--backend", "openai", "--model", "vlm",
                                       "--endpoint", f"http://127.0.0.1:{httpd.server_address[1]}/v1",
                                       "--output", str(read_only_dir / "captions"), "--retries", "0"])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 2
    assert f"cannot write in {read_only_dir}" in _one_line(capsys, "generate_captions.py: error: --output")
    assert requests == []


def test_eval_reports_valid_queries_and_refuses_when_none_has_a_match(uninterrupted, tiny_dataset, tmp_path,
                                                                      capsys):
    import datasets

    ds = datasets.load_from_disk(tiny_dataset)
    first = ds["gallery"]["pid"][0]
    dropped = datasets.DatasetDict({"query": ds["query"],
                                    "gallery": ds["gallery"].filter(lambda row: row["pid"] != first)})
    dropped.save_to_disk(str(tmp_path / "dropped"))
    assert _eval("--model", uninterrupted, "--dataset", tmp_path / "dropped", "--output", tmp_path / "e1") == 0
    report = json.loads((tmp_path / "e1" / "eval_results.json").read_text())
    unmatched = sum(pid == first for pid in ds["query"]["pid"])
    assert unmatched > 0 and report["num_query"] == len(ds["query"])
    assert report["num_valid_queries"] == len(ds["query"]) - unmatched
    assert (f"{len(ds['query'])} queries ({len(ds['query']) - unmatched} with a true match in the gallery"
            in (tmp_path / "e1" / "eval_results.md").read_text())
    capsys.readouterr()
    shifted = datasets.DatasetDict({"query": ds["query"],
                                    "gallery": ds["gallery"].map(lambda row: {"pid": row["pid"] + 1000})})
    shifted.save_to_disk(str(tmp_path / "shifted"))
    capsys.readouterr()
    assert _eval("--model", uninterrupted, "--dataset", tmp_path / "shifted", "--output", tmp_path / "e2") == 2
    assert "no query has a true match in the gallery" in _one_line(capsys, "eval.py: error: ")


# ------------------------------------------------------------------------------------------ files
def test_saved_weights_follow_the_umask_and_no_pickled_arguments(tiny_dataset, tmp_path):
    out = tmp_path / "files"
    old = os.umask(0o022)
    try:
        train.main([*_common(tiny_dataset), "--max-steps", "1", "--save-strategy", "steps", "--save-steps", "1",
                    "--output-dir", str(out)])
    finally:
        os.umask(old)
    for folder in (out, out / "checkpoint-1"):
        assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o644
        assert (folder / "config.json").stat().st_mode & 0o777 == 0o644
        assert not (folder / "training_args.bin").exists()
        assert json.loads((folder / "training_args.json").read_text())["max_steps"] == 1


# ------------------------------------------------------------------------------------------ images
def _expected_8bit(values: np.ndarray) -> np.ndarray:
    """The documented rule, written out: min -> 0, max -> 255, linear, rounded."""
    v = values.astype(np.float64)
    return np.round((v - v.min()) / (v.max() - v.min()) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def thermal_release(tmp_path_factory):
    """A synthetic RGBNT201 release whose first train triple is PNG, its TIR image a real 16-bit PNG whose raw
    counts fill a narrow band (7,000-9,040 of 65,535), as a thermal camera's do."""
    from PIL import Image

    from mmreid.data.synthetic import make_synthetic

    root = make_synthetic("RGBNT201", tmp_path_factory.mktemp("thermal") / "raw", seed=0, num_train_ids=2,
                          num_test_ids=2, images_per_id=4, image_size=(32, 16))
    train_dir = root / "train_171"  # the release's folder name
    name = sorted(p.name for p in (train_dir / "RGB").iterdir())[0]
    png = name.replace(".jpg", ".png")
    for modality in ("RGB", "NI"):
        Image.open(train_dir / modality / name).save(train_dir / modality / png)
        (train_dir / modality / name).unlink()
    grey = np.asarray(Image.open(train_dir / "TI" / name).convert("L"), dtype=np.uint16)
    counts = (7000 + grey * 8).astype(np.uint16)
    Image.fromarray(counts).save(train_dir / "TI" / png)
    (train_dir / "TI" / name).unlink()
    assert Image.open(train_dir / "TI" / png).mode == "I;16"  # really 16-bit on disk
    return root, png, counts


def test_16bit_thermal_png_is_scaled_by_its_range_in_builder_collator_and_processor(thermal_release, tmp_path):
    from PIL import Image

    from mmreid.data.builder import build_dataset
    from mmreid.data.collate import ReIDTransform
    from image_processing_reid import DeMoImageProcessor

    root, png, counts = thermal_release
    expected = _expected_8bit(counts)
    dataset = build_dataset("RGBNT201", root, cache_dir=tmp_path / "cache")
    row = next(r for r in dataset["train"] if r["name"] == png)
    stored = row["tir"]
    assert stored.mode == "L" and np.array_equal(np.asarray(stored), expected)  # the builder stored 8 bits
    normalised = torch.as_tensor(expected, dtype=torch.float32) / 255 * 2 - 1
    # the collator, on the stored image and on the 16-bit file itself
    transform = ReIDTransform(image_size=counts.shape)
    for value in (row["tir"], str(root / "train_171" / "TI" / png)):
        batch = transform({"rgb": [row["rgb"]], "nir": [row["nir"]], "tir": [value], "label": [0], "camid": [0],
                           "pid": [0]})
        tir = batch["pixel_values"][0, 2]
        assert float((tir == 1).float().mean()) < 0.05  # before: 99.6 % white
        torch.testing.assert_close(tir, normalised.expand(3, -1, -1), rtol=0, atol=1e-6)
    # the checkpoint's processor, on the 16-bit file, on a uint16 array and on a 32-bit float TIFF
    processor = DeMoImageProcessor(size={"height": counts.shape[0], "width": counts.shape[1]})
    Image.fromarray(counts.astype(np.float32) / 100).save(tmp_path / "thermal.tiff")
    assert Image.open(tmp_path / "thermal.tiff").mode == "F"
    for image in (Image.open(root / "train_171" / "TI" / png), counts, Image.open(tmp_path / "thermal.tiff")):
        tir = processor([None, None, image])["pixel_values"][0, 2]
        torch.testing.assert_close(tir, normalised.expand(3, -1, -1), rtol=0, atol=1e-5)


def test_processor_refuses_non_integer_camera_ids():
    from image_processing_reid import DeMoImageProcessor

    processor = DeMoImageProcessor(size={"height": 32, "width": 16})
    image = np.zeros((32, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"camera_ids: expected integer camera indices, got \[2.9\]"):
        processor([image, None, None], camera_ids=[2.9])
    assert processor([image, None, None], camera_ids=[2.0])["camera_ids"].tolist() == [2]


def test_forward_refuses_non_finite_pixels_and_an_empty_modality_mask(tiny_model):
    pixels = torch.zeros(2, 3, 3, 32, 16)
    pixels[1, 2, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"pixel_values holds NaN or infinite values \(sample\(s\) \[1\]\)"):
        tiny_model(pixels)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match=r"modality_mask marks no modality present for sample\(s\) \[1\]"):
        tiny_model(torch.zeros(2, 3, 3, 32, 16), modality_mask=mask)
    with torch.no_grad():
        assert torch.isfinite(tiny_model(torch.zeros(2, 3, 3, 32, 16), modality_mask=mask | True).embeddings).all()
