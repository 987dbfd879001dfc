"""The Hub round trip against the in-memory Hub of fake_hub.py: a dataset pushed by build_dataset.py trains with
train.py --dataset <hub id> and evaluates with eval.py; every --hub-strategy pushes only loadable revisions (each one
read back from the Hub in a fresh process with nothing of the project importable); a run whose uploads fail says so
in its log; a fresh output directory resumes from the Hub's last-checkpoint/ and ends bit-identical to an
uninterrupted run."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_in_fresh_process, tiny_train_args
from huggingface_hub import ModelCard
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mmreid.data.synthetic import make_synthetic  # noqa: E402
from fake_hub import FakeHub  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASET_ID = "tester/rgbnt201-tiny"
STEPS = ["--max-steps", "6", "--save-strategy", "steps", "--save-steps", "3"]
TRAIN = [*tiny_train_args(), "--num-identities", "2", "--num-instances", "2", "--per-device-eval-batch-size", "16",
         *STEPS, "--dataset", DATASET_ID, "--report-to", "none"]
# What a revision needs to load with remote code and the pipeline, at the root and in every checkpoint folder.
MODEL_FILES = {"config.json", "model.safetensors", "configuration_demo.py", "modeling_demo.py", "configuration_reid.py",
               "modeling_reid.py", "preprocessor_config.json", "image_processing_reid.py", "pipeline_reid.py",
               "training_args.json"}
CARD_FILES = {"README.md", "LICENSE.md"}
RESUME_STATE = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The fake Hub, holding the tiny dataset pushed by build_dataset.py; (hub, env of its clients, base folder)."""
    base = tmp_path_factory.mktemp("hub")
    raw = make_synthetic("RGBNT201", base / "raw", seed=3, num_train_ids=4, num_test_ids=3, images_per_id=4,
                         image_size=(32, 16))
    with FakeHub() as fake:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_ENDPOINT=fake.url, HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0", HF_TOKEN="hf_dummy",
                   HF_HOME=str(base / "hf_home"), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
                   OMP_NUM_THREADS="1", HF_MODULES_CACHE=str(base / "modules"))
        proc = subprocess.run([sys.executable, str(REPO / "data_scripts" / "build_dataset.py"), "--name", "RGBNT201",
                               "--root", str(raw), "--output", str(base / "local-copy"), "--push-to-hub", DATASET_ID],
                              env=env, cwd=base, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield fake, env, base


def _run(script, args, env, cwd):
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _push_run(hub, strategy, out, *extra):
    """train.py --push-to-hub into its own repo; (process, repo id, that repo's commits)."""
    fake, env, base = hub
    repo_id = f"tester/demo-{strategy.replace('_', '-')}"
    before = len(fake.commits)
    proc = _run("train.py", [*TRAIN, "--output-dir", out, "--push-to-hub", "--hub-model-id", repo_id,
                             "--hub-strategy", strategy, *extra], env, base)
    return proc, repo_id, [c for c in fake.commits[before:] if c["repo"] == repo_id]


@pytest.fixture(scope="module")
def strategy_runs(hub):
    """One run per --hub-strategy; checkpoint's is a run whose uploads fail after its first push (the Hub goes
    away), continued on a fresh output directory from the Hub (--resume)."""
    fake, env, base = hub
    runs = {}
    for strategy in ("end", "every_save", "all_checkpoints"):
        proc, repo_id, commits = _push_run(hub, strategy, base / strategy)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[strategy] = (proc, repo_id, commits)
    fake.refuse_commits_after(len(fake.commits) + 1)
    first = _push_run(hub, "checkpoint", base / "checkpoint-machine-1", "--hub-always-push")
    fake.refuse_commits_after(None)
    resumed = _push_run(hub, "checkpoint", base / "checkpoint-machine-2", "--resume")
    assert resumed[0].returncode == 0, resumed[0].stderr[-3000:]
    runs["checkpoint"] = (resumed[0], resumed[1], first[2] + resumed[2])
    return {"runs": runs, "first": first, "resumed": resumed, "base": base}


def _tree(fake, repo_id, sha) -> dict[str, set[str]]:
    """Folder -> file names of one revision ("" = the root)."""
    folders: dict[str, set[str]] = {}
    for path in fake.files("model", repo_id, sha):
        folder, _, name = path.rpartition("/")
        folders.setdefault(folder, set()).add(name)
    return folders


def test_every_pushed_revision_holds_a_loadable_model(hub, strategy_runs):
    fake = hub[0]
    expected_commits = {"end": ["Model save"], "every_save": [f"Training in progress, step {s}" for s in (3, 6)]
                        + ["Model save"]}
    expected_commits["all_checkpoints"] = expected_commits["checkpoint"] = expected_commits["every_save"]
    expected_folders = {"end": [""], "every_save": [""], "checkpoint": ["", "last-checkpoint"],
                        "all_checkpoints": ["", "checkpoint-3"]}
    for strategy, (_, repo_id, commits) in strategy_runs["runs"].items():
        assert [c["summary"] for c in commits] == expected_commits[strategy], strategy
        for commit in commits:
            tree = _tree(fake, repo_id, commit["sha"])
            print(f"--hub-strategy {strategy}, {repo_id}@{commit['sha'][:8]} ({commit['summary']}):",
                  "; ".join(f"{folder or '/'}: {' '.join(sorted(names))}" for folder, names in sorted(tree.items())))
            assert MODEL_FILES | CARD_FILES <= tree[""], (strategy, commit["summary"], tree[""])
            weights = sorted(folder for folder, names in tree.items() if "model.safetensors" in names)
            assert weights[:2] == expected_folders[strategy], (strategy, commit["summary"], weights)
            for folder in weights[1:]:  # a checkpoint folder: the model, and the Trainer state to resume from
                assert MODEL_FILES | RESUME_STATE <= tree[folder], (strategy, folder, tree[folder])
            pickles = [f"{folder}/{name}" for folder, names in tree.items() for name in names
                       if name.endswith(PICKLE_SUFFIXES) and folder not in weights[1:]]
            assert pickles == [], (strategy, pickles)  # pickles only in checkpoint folders (the resume state)
            assert not any(part.startswith(".") for folder in tree for part in folder.split("/")), tree
    _, repo_id, _ = strategy_runs["runs"]["all_checkpoints"]
    assert {"checkpoint-3", "checkpoint-6"} <= set(_tree(fake, repo_id, "main"))
    assert fake.unhandled == []


def test_cards_name_the_hub_dataset_and_what_was_trained(hub, strategy_runs):
    fake = hub[0]
    _, repo_id, commits = strategy_runs["runs"]["every_save"]
    progress = ModelCard(fake.file("model", repo_id, "README.md", commits[0]["sha"]).decode())
    final = ModelCard(fake.file("model", repo_id, "README.md").decode())
    for card in (progress, final):
        assert card.data.datasets == [DATASET_ID] and card.data.pipeline_tag == "image-feature-extraction"
        assert card.data.license == "other" and card.data.license_link == "LICENSE.md"
        assert "torch.no_grad()" in card.text and 'pipeline("image-feature-extraction"' in card.text
    assert "Training in progress" in progress.text and "step 3 of 6" in progress.text
    assert "| optimizer steps trained | 3 |" in progress.text and not progress.data.eval_results
    assert "| optimizer steps trained | 6 |" in final.text and "| epochs trained | 1.5 |" in final.text
    assert "epoch 20" not in final.text and "20 epochs" not in final.text
    results = final.data.eval_results
    assert {r.metric_type for r in results} == {"map", "rank-1"} and all(r.dataset_type == DATASET_ID
                                                                       for r in results)
    metrics = json.loads(fake.file("model", repo_id, "final_metrics.json"))
    assert {r.metric_type: r.metric_value for r in results}["map"] == pytest.approx(metrics["mAP"], abs=0.006)
    terms = fake.file("model", repo_id, "LICENSE.md").decode()
    assert "research use only" in terms and "Apache License 2.0" in terms
    args = json.loads(fake.file("model", repo_id, "training_args.json"))
    assert args["max_steps"] == 6 and args["hub_strategy"] == "every_save" and args["hub_token"] == "<HUB_TOKEN>"


LOAD_EVERY_REVISION = textwrap.dedent(
    """
    import json, sys
    for name in {modules!r}:
        sys.modules[name] = None
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, pipeline

    spec = json.loads(open({spec!r}).read())
    out = {{}}
    for i, (repo_id, sha, subfolder) in enumerate(spec["revisions"]):
        kwargs = dict(revision=sha, trust_remote_code=True, **({{"subfolder": subfolder}} if subfolder else {{}}))
        model = AutoModel.from_pretrained(repo_id, **kwargs).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model)
        out.update({{f"{{i}}/{{k}}": v.contiguous() for k, v in model.state_dict().items()}})
        if not subfolder:  # the repo root: the pipeline, as the card's snippet runs it
            pipe = pipeline("image-feature-extraction", model=repo_id, revision=sha, trust_remote_code=True)
            assert type(pipe).__name__ == "ReIDFeatureExtractionPipeline", type(pipe)
            out[f"pipe{{i}}"] = pipe(spec["files"], camera_ids=0)["embedding"]
    save_file(out, spec["output"])
    """
)


def _local_weights(base: Path, strategy: str, commit: dict, folder: str) -> Path:
    """The local file a pushed revision's weights come from: the checkpoint it names, or the final model."""
    run = base / ("checkpoint-machine-" + ("1" if "step 3" in commit["summary"] else "2")
                  if strategy == "checkpoint" else strategy)
    if folder.startswith("checkpoint-"):
        return run / folder / "model.safetensors"
    if commit["summary"].startswith("Training in progress, step "):
        return run / f"checkpoint-{commit['summary'].rsplit(' ', 1)[1]}" / "model.safetensors"
    return run / "model.safetensors"  # the final model (last-checkpoint/ of that commit: its checkpoint-6)


def test_every_revision_loads_from_the_hub_in_a_fresh_process(hub, strategy_runs, tmp_path):
    """AutoModel (root and checkpoint folders) and pipeline() at every commit of every strategy, read from the Hub
    in a process that can import nothing of the project: each holds the weights of the checkpoint it names."""
    import datasets

    fake, env, base = hub
    revisions, sources = [], []
    for strategy, (_, repo_id, commits) in strategy_runs["runs"].items():
        for commit in commits:
            for folder, names in sorted(_tree(fake, repo_id, commit["sha"]).items()):
                if "model.safetensors" in names:
                    revisions.append((repo_id, commit["sha"], folder))
                    final_checkpoint = folder == "last-checkpoint" and commit["summary"] == "Model save"
                    sources.append(_local_weights(base, strategy, commit, "checkpoint-6" if final_checkpoint
                                                  else folder if folder != "last-checkpoint" else ""))
    assert len(revisions) == 1 + 3 + (2 + 3 + 3) + (2 + 2 + 2)
    query = datasets.load_from_disk(str(base / "local-copy" / "query"))
    files = []
    for modality in ("rgb", "nir", "tir"):
        path = tmp_path / f"{modality}.jpg"
        path.write_bytes(query.cast_column(modality, datasets.Image(decode=False))[0][modality]["bytes"])
        files.append(str(path))
    got = run_in_fresh_process(LOAD_EVERY_REVISION, {"revisions": revisions, "files": files}, tmp_path, env)
    for i, source in enumerate(sources):
        saved = load_file(source)
        assert all(torch.equal(got[f"{i}/{k}"], v) for k, v in saved.items()), (revisions[i], source)
    pipes = [got[k] for k in got if k.startswith("pipe")]
    assert len(pipes) == 1 + 3 + 3 + 3 and all(p.shape == pipes[0].shape for p in pipes)
    assert fake.unhandled == []


def test_failed_uploads_are_reported(hub, strategy_runs):
    """Machine 1's Hub refuses every commit after its first: the background push of checkpoint-6 is logged as an
    error, and the final push ends train.py with a one-line error that says the model is saved locally."""
    proc, repo_id, commits = strategy_runs["first"]
    assert [c["summary"] for c in commits] == ["Training in progress, step 3"]
    log = proc.stderr.splitlines()
    failed = [line for line in log if " ERROR " in line and f"pushing checkpoint-6 to {repo_id} failed" in line]
    assert len(failed) == 1 and "503" in failed[0], log[-20:]
    assert proc.returncode == 2 and log[-1].startswith("train.py: error: --push-to-hub: pushing "), log[-5:]
    assert "the model is saved in" in log[-1]
    assert hub[0].refused[:2] == ["Training in progress, step 6", "Model save"]  # the fixture's run came first


def test_resume_from_the_hub_ends_with_the_uninterrupted_weights(strategy_runs):
    """Machine 1 pushed last-checkpoint/ at step 3, then lost the Hub; machine 2 (an empty --output-dir) downloads
    it and finishes the run: bit-identical to the uninterrupted run (the `end` strategy's, same data and seed)."""
    base = strategy_runs["base"]
    proc = strategy_runs["resumed"][0]
    assert "downloaded last-checkpoint/ (step 3)" in proc.stderr and "resuming from" in proc.stderr
    info = json.loads((base / "checkpoint-machine-2" / "run_info.json").read_text())
    assert info["resumed_from"].endswith("checkpoint-3")
    full = load_file(base / "end" / "model.safetensors")
    resumed = load_file(base / "checkpoint-machine-2" / "model.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    print(f"resumed from the Hub vs uninterrupted: {len(full)} tensors, "
          f"{sum(v.numel() for v in full.values())} values, largest difference "
          f"{max((full[k] - resumed[k]).abs().max().item() for k in full)}")
    at_step_3 = load_file(base / "checkpoint-machine-1" / "checkpoint-3" / "model.safetensors")
    assert any(not torch.equal(full[k], at_step_3[k]) for k in full)  # the resumed run really trained on


def test_eval_reads_a_hub_dataset_and_a_missing_one_is_one_line(hub, strategy_runs, tmp_path):
    fake, env, base = hub
    proc = _run("eval.py", ["--model", base / "end", "--dataset", DATASET_ID, "--output", tmp_path / "eval",
                            "--no-progress", "--no-complexity"], env, base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    final = json.loads((base / "end" / "final_metrics.json").read_text())
    assert report["results"][report["headline_features"]]["mAP"] == pytest.approx(final["mAP"], abs=1e-6)
    proc = _run("eval.py", ["--model", base / "end", "--dataset", "tester/no-such-dataset", "--output",
                            tmp_path / "eval2"], env, base)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and err[-1].startswith("eval.py: error: --dataset: tester/no-such-dataset is "
                                                       "neither a local folder nor a Hub dataset"), err[-3:]
    assert not (tmp_path / "eval2").exists()


def test_the_checkpoint_to_resume_from_is_last_checkpoint_else_the_highest_numbered():
    from mmreid.hub.resume import hub_checkpoint_folder

    assert hub_checkpoint_folder(["README.md", "last-checkpoint/config.json", "checkpoint-9/config.json"]) \
        == "last-checkpoint"
    assert hub_checkpoint_folder(["checkpoint-10/trainer_state.json", "checkpoint-9/trainer_state.json",
                                  "model.safetensors"]) == "checkpoint-10"  # numeric, not string, order
    assert hub_checkpoint_folder(["model.safetensors", "runs/events.out"]) is None


@pytest.mark.parametrize("argv, needle", [
    (["--dataset-revision", "main"], "--dataset-revision applies to a Hub --dataset"),
    (["--dataset", "LOCAL", "--dataset-revision", "v1"], "applies to Hub dataset ids, not to the local folder"),
    (["--dataset", "tester/not-here"], "--dataset: tester/not-here is neither a local folder nor a Hub dataset"),
    (["--resume", "--hub-model-id", "tester/run"], "--resume: cannot read --hub-model-id tester/run from the Hub"),
])
def test_hub_input_errors_are_one_line_and_write_nothing(argv, needle, tmp_path, capsys, monkeypatch):
    """Offline here (HF_HUB_OFFLINE=1): a Hub id that cannot be read stops train.py before anything is written."""
    import train

    local = tmp_path / "local-folder"  # exists: read as a local folder, whatever it holds
    local.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = [str(local) if arg == "LOCAL" else arg for arg in argv]
    code = train.cli([*tiny_train_args(), "--output-dir", str(work / "out"), "--synthetic-dir", str(work / "syn"),
                      *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("train.py: error: ") and needle in err[0], err
    assert list(work.iterdir()) == []


def test_push_to_an_unreachable_hub_stops_before_training(tmp_path, capsys):
    """Offline here: the repo cannot be created, which train.py says in one line before training or writing."""
    import train
    from conftest import build_tiny_dataset

    dataset = build_tiny_dataset(tmp_path / "data", seed=5, num_train_ids=3, num_test_ids=2, images_per_id=4)
    out = tmp_path / "out"
    code = train.cli([*tiny_train_args(), "--num-identities", "2", "--num-instances", "2", "--dataset", dataset,
                      "--output-dir", str(out), "--push-to-hub", "--hub-model-id", "tester/run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("train.py: error: --push-to-hub: cannot create or reach the model repo "
                                            "tester/run on the Hub (OfflineModeIsEnabled"), err[-3:]
    assert not out.exists()


def test_embed_reads_a_hub_dataset_and_pushes_its_embeddings(hub, strategy_runs, tmp_path):
    """embed.py --dataset <hub id> embeds what it embeds from the local copy of that dataset; --push-to-hub
    publishes the embeddings as the split's name, and load_dataset reads the same rows back from the Hub; a Hub
    that refuses the push is one line that says where the embeddings are."""
    import datasets

    fake, env, base = hub
    embed = ["--model", base / "end", "--split", "gallery", "--no-progress"]
    proc = _run("data_scripts/embed.py", [*embed, "--dataset", DATASET_ID, "--output", tmp_path / "from-hub",
                                          "--push-to-hub", "tester/gallery-embeddings"], env, base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run("data_scripts/embed.py", [*embed, "--dataset", base / "local-copy", "--output",
                                          tmp_path / "from-disk"], env, base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    read_back = ("import datasets, sys; datasets.load_dataset(sys.argv[1], split='gallery')"
                 ".save_to_disk(sys.argv[2])")
    proc = subprocess.run([sys.executable, "-c", read_back, "tester/gallery-embeddings", str(tmp_path / "pulled")],
                          env=env, cwd=base, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_hub, from_disk, pulled = (datasets.load_from_disk(str(tmp_path / name))
                                   for name in ("from-hub", "from-disk", "pulled"))
    assert len(from_disk) > 0 and from_hub.column_names == from_disk.column_names == pulled.column_names
    for column in ("pid", "camid", "sceneid", "name"):
        assert from_hub[column] == from_disk[column] == pulled[column], column
    local = np.asarray(from_disk["embedding"], dtype=np.float32)
    assert np.abs(np.asarray(from_hub["embedding"], dtype=np.float32) - local).max() <= 1e-6
    assert np.array_equal(np.asarray(pulled["embedding"], dtype=np.float32), np.asarray(from_hub["embedding"],
                                                                                         dtype=np.float32))

    fake.refuse_commits_after(len(fake.commits))
    try:
        proc = _run("data_scripts/embed.py", [*embed, "--dataset", base / "local-copy", "--output",
                                              tmp_path / "refused", "--push-to-hub", "tester/refused"], env, base)
    finally:
        fake.refuse_commits_after(None)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and err[-1].startswith("embed.py: error: --push-to-hub tester/refused: "), err[-3:]
    assert err[-1].endswith(f"(the embeddings are saved in {tmp_path / 'refused'})"), err[-1]
