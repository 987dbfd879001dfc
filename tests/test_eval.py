"""eval.py end to end on a tiny saved model and a synthetic dataset, checked against features computed
directly with the model (no DataLoader, no accelerate, pixels zeroed by hand for missing modalities)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port

import datasets
from mmreid.evaluation import visualize as vis
from mmreid.data.collate import ReIDTransform
from mmreid.data.loading import load_reid_dataset
from mmreid.evaluation.protocol import (
    EvaluationInputError,
    choose_protocol,
    evaluate_retrieval,
    modality_mask_for,
)
from mmreid.evaluation.metrics import reid_metrics, reid_metrics_from_features
from mmreid.evaluation.reranking import re_ranking

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import eval as eval_script  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from mmreid.data.builder import build_dataset, save_dataset
    from mmreid.data.synthetic import make_synthetic

    base = tmp_path_factory.mktemp("data")
    root = make_synthetic("RGBNT201", base / "raw", num_train_ids=4, num_test_ids=6, images_per_id=4,
                          image_size=(32, 16))
    return save_dataset(build_dataset("RGBNT201", root, cache_dir=base / "cache"), base / "ds")


def _tiny_model(num_cameras=4):
    from mmreid.hub.backbones import tiny_demo_config
    from modeling_demo import DeMoModel

    torch.manual_seed(0)
    model = DeMoModel(tiny_demo_config(num_labels=4, num_cameras=num_cameras, image_size=(32, 16))).eval()
    # At init the ATMoE feature is ~100x smaller than the ori one and the gate is uniform, which would let
    # "all" == "ori" bugs pass; std 0.3 makes both feature parts of similar size and the gate non-uniform.
    with torch.no_grad():
        for module in (model.decoupling, model.mixture_of_experts):
            for p in module.parameters():
                if p.ndim == 2:
                    p.normal_(0, 0.3)
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "demo"
    _tiny_model().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    from modeling_demo import DeMoModel

    return DeMoModel.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def splits(dataset_dir):
    return load_reid_dataset(dataset_dir, splits=("query", "gallery"))


def direct_outputs(model, split, missing=()):
    """Features of a whole split in one forward pass; `missing` modalities (0=RGB, 1=NIR, 2=TIR) zeroed by hand."""
    batch = ReIDTransform(image_size=model.config.image_size)(split[:])
    pixels = batch["pixel_values"].clone()
    for m in missing:
        pixels[:, m] = 0.0  # normalized zero = what the model substitutes for a missing modality
    with torch.no_grad():
        out = model(pixel_values=pixels, camera_ids=batch["camera_ids"])
    return out, batch


def reference(model, splits, name, missing=()):
    q, qb = direct_outputs(model, splits["query"], missing)
    g, gb = direct_outputs(model, splits["gallery"], missing)
    pick = {"ori": lambda o: o.ori_embeddings, "moe": lambda o: o.moe_embeddings, "all": lambda o: o.embeddings}[name]
    return pick(q), pick(g), qb, gb


def reference_metrics(model, splits, name, missing=()):
    qf, gf, qb, gb = reference(model, splits, name, missing)
    res = reid_metrics_from_features(qf, gf, qb["pids"], gb["pids"], qb["camera_ids"], gb["camera_ids"], max_rank=10)
    return {"mAP": 100 * res["mAP"], "Rank-1": 100 * res["cmc"][0], "mINP": 100 * res["mINP"]}


def run_eval(*argv):
    return eval_script.main([*map(str, argv), "--no-progress"])


def assert_close(got, ref, keys=("mAP", "Rank-1", "mINP")):
    for k in keys:
        assert got[k] == pytest.approx(ref[k], abs=1e-3), k


# ------------------------------------------------------------------------------------------ end to end
def test_eval_rows_match_direct_model_features(model, model_dir, dataset_dir, splits, tmp_path):
    assert run_eval("--model", model_dir, "--dataset", dataset_dir, "--output", tmp_path, "--max-rank", "10") == 0
    report = json.loads((tmp_path / "eval_results.json").read_text())
    assert list(report["results"]) == ["ori", "moe", "all"]
    assert report["protocol"] == "camera" and report["num_query"] == len(splits["query"])
    for name in ("ori", "moe", "all"):
        assert_close(report["results"][name], reference_metrics(model, splits, name))
        assert len(report["results"][name]["cmc"]) == 10
    # the rows really differ (the model's moe branch is not negligible here)
    maps = [report["results"][n]["mAP"] for n in ("ori", "moe", "all")]
    assert len({round(m, 3) for m in maps}) == 3, maps
    assert report["complexity"]["params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report["complexity"]["macs"] > 0
    md = (tmp_path / "eval_results.md").read_text()
    assert "| Features | mAP | Rank-1 | Rank-5 | Rank-10 | mINP |" in md
    assert f"| all | {report['results']['all']['mAP']:.1f} |" in md


def test_missing_sweep_and_pictures(model, model_dir, dataset_dir, splits, tmp_path):
    code = run_eval("--model", model_dir, "--dataset", dataset_dir, "--output", tmp_path, "--features", "all",
                    "--missing-sweep", "--visualize", "--no-complexity")
    assert code == 0
    report = json.loads((tmp_path / "eval_results.json").read_text())
    sweep = report["missing_sweep"]
    assert list(sweep["settings"]) == ["r", "n", "t", "rn", "rt", "nt"]
    # "M (RGB)" = RGB missing in query AND gallery; "M (NIR+TIR)" = only RGB left.
    assert_close(sweep["settings"]["r"]["all"], reference_metrics(model, splits, "all", missing=(0,)))
    assert_close(sweep["settings"]["nt"]["all"], reference_metrics(model, splits, "all", missing=(1, 2)))
    for k in ("mAP", "Rank-1"):
        assert sweep["average"]["all"][k] == pytest.approx(np.mean([sweep["settings"][s]["all"][k] for s in sweep["settings"]]))
    md = (tmp_path / "eval_results.md").read_text()
    assert "M (RGB+NIR) mAP" in md and "Average R-1" in md

    expected = {
        "rank_lists.png": vis.rank_list_size(4, 10, (96, 48)),  # 96 px high cells with the model's 2:1 aspect
        "expert_weights.png": (1000, 400),
        "expert_weights_missing.png": (800, 400),
        # t-SNE when scikit-learn imports (the dev extra), else the PCA fallback; 8 x 6 inches at 100 dpi
        f"feature_{'tsne' if importlib.util.find_spec('sklearn') else 'pca'}.png": (800, 600),
    }
    assert sorted(Path(p).name for p in report["figures"]) == sorted(expected)
    for name, size in expected.items():
        from PIL import Image

        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and img.size == size, name
            img.verify()


def test_single_setting_rerank_and_feature_choice(model, model_dir, dataset_dir, splits, tmp_path):
    code = run_eval("--model", model_dir, "--dataset", dataset_dir, "--output", tmp_path, "--features", "moe",
                    "--rerank", "--rerank-k1", "6", "--rerank-k2", "3", "--missing", "t", "--no-complexity")
    assert code == 0
    report = json.loads((tmp_path / "eval_results.json").read_text())
    assert list(report["results"]) == ["moe"]
    assert list(report["missing_sweep"]["settings"]) == ["t"] and report["missing_sweep"]["average"] is None
    qf, gf, qb, gb = reference(model, splits, "moe")
    res = reid_metrics(re_ranking(qf, gf, k1=6, k2=3, lambda_value=0.3), qb["pids"], gb["pids"], qb["camera_ids"],
                       gb["camera_ids"])
    assert_close(report["results"]["moe"], {"mAP": 100 * res["mAP"], "Rank-1": 100 * res["cmc"][0], "mINP": 100 * res["mINP"]})


def test_evaluate_retrieval_api(model, splits):
    got, headline = evaluate_retrieval(model, splits["query"], splits["gallery"], batch_size=7,
                                       feature_names=("ori", "all"), modality_mask="rn", progress=False)
    assert list(got) == ["ori", "all"] and headline == "all"  # the model's embeddings are its "all" row
    for name in ("ori", "all"):
        ref = reference_metrics(model, splits, name, missing=(0, 1))
        assert_close(got[name], ref)


def test_two_processes_give_the_single_process_result(model, model_dir, dataset_dir, splits, tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), str(REPO / "eval.py"), "--model", str(model_dir),
           "--dataset", str(dataset_dir), "--output", str(tmp_path), "--batch-size", "5", "--features", "all",
           "--no-complexity", "--no-progress", "--max-rank", "10"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "eval_results.json").read_text())
    assert report["num_processes"] == 2  # 24 rows in batches of 5: the padded last round must be dropped
    assert_close(report["results"]["all"], reference_metrics(model, splits, "all"))


# ------------------------------------------------------------------------------------------- bad input
def _write_config(path, **content):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(content))
    return path


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, dataset_dir):
    base = tmp_path_factory.mktemp("bad")
    ds = datasets.load_from_disk(str(dataset_dir))
    datasets.DatasetDict({"train": ds["train"]}).save_to_disk(str(base / "train_only"))
    datasets.DatasetDict({"query": ds["query"].select([]), "gallery": ds["gallery"]}).save_to_disk(str(base / "empty_query"))
    _tiny_model(num_cameras=1).save_pretrained(base / "one_camera")
    _write_config(base / "bert", model_type="bert")
    (base / "no_config").mkdir()
    return base


@pytest.mark.parametrize(
    "model, dataset, extra, message",
    [
        ("no_config", None, [], "no config.json there"),
        ("bert", None, [], "config.json has no auto_map for AutoModel"),
        (None, "train_only", [], "needs query and gallery splits"),
        (None, "empty_query", [], "the query split is empty"),
        (None, None, ["--missing", "r,x"], "each setting must be one of r, n, t, rn, rt, nt"),
        ("one_camera", None, [], "model was trained with num_cameras=1"),
    ],
)
def test_bad_input_is_one_line_error(bad_inputs, model_dir, dataset_dir, tmp_path, capsys, model, dataset, extra, message):
    model_path = bad_inputs / model if model else model_dir
    dataset_path = bad_inputs / dataset if dataset else dataset_dir
    code = run_eval("--model", model_path, "--dataset", dataset_path, "--output", tmp_path, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("eval.py: error:") and message in err[0], err


def test_protocol_and_mask_helpers():
    assert choose_protocol([0, 3], [1, 2]) == "scene"
    assert choose_protocol([0, -1], [1, 2]) == "camera"  # scene ids missing for some rows
    assert modality_mask_for("rt").tolist() == [False, True, False]
    assert modality_mask_for(None) is None
    with pytest.raises(EvaluationInputError, match="unknown missing-modality setting 'rgb'"):
        modality_mask_for("rgb")


def test_empty_split_and_unknown_feature_are_clear_errors(model, splits):
    with pytest.raises(EvaluationInputError, match="the query split is empty"):
        evaluate_retrieval(model, splits["query"].select([]), splits["gallery"], progress=False)
    with pytest.raises(EvaluationInputError, match="unknown feature set 'fused'"):
        evaluate_retrieval(model, splits["query"], splits["gallery"], feature_names=("fused",), progress=False)
