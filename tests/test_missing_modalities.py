"""Data with missing modalities (None images in the Arrow columns, image folders without a modality sub-folder)
trains, evaluates and embeds through modality_mask, or with the RGB image repeated into the missing ones
(--fill-missing-modalities rgb); a mistyped --dataset path fails at once; a run that fails on its first batch
leaves nothing behind."""

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
from conftest import REPO_ROOT, build_tiny_dataset, tiny_train_args

from mmreid.data.collate import ReIDCollator
from mmreid.data.loading import open_reid_dataset

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | dict(
    OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
NOTICE = "no NIR and no TIR image in any row"


def _run(script: str, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *map(str, args)], cwd=cwd or REPO_ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def _with(dsd: datasets.DatasetDict, fn) -> datasets.DatasetDict:
    return datasets.DatasetDict({s: ds.map(fn) for s, ds in dsd.items()})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same tiny synthetic set three ways: complete, without NIR and TIR (None), and with the RGB image copied
    into NIR and TIR (what --fill-missing-modalities rgb must give)."""
    base = tmp_path_factory.mktemp("missing-data")
    complete = Path(build_tiny_dataset(base, seed=3, num_train_ids=8, num_test_ids=6, images_per_id=6))
    dsd = datasets.load_from_disk(str(complete))
    raw = {s: ds.cast_column("rgb", datasets.Image(decode=False)) for s, ds in dsd.items()}
    rgb_only = base / "rgb-only"
    _with(dsd, lambda r: {"nir": None, "tir": None}).save_to_disk(str(rgb_only))
    copied = base / "rgb-copied"
    datasets.DatasetDict({s: ds.map(lambda r: {"nir": r["rgb"], "tir": r["rgb"]}).cast(dsd[s].features)
                          for s, ds in raw.items()}).save_to_disk(str(copied))
    return {"complete": complete, "rgb_only": rgb_only, "copied": copied, "base": base}


def _train(data, dataset, out, *extra):
    proc = _run("train.py", *tiny_train_args(), "--dataset", dataset, "--output-dir", out, "--num-identities", "4",
                "--num-instances", "2", "--max-steps", "6", "--save-strategy", "no", "--seed", "0", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _eval(model, dataset, out, *extra) -> dict:
    proc = _run("eval.py", "--model", model, "--dataset", dataset, "--output", out, "--no-progress", "--no-complexity",
                *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((Path(out) / "eval_results.json").read_text()) | {"stderr": proc.stderr}


@pytest.fixture(scope="module")
def masked_model(data):
    out = data["base"] / "masked"
    proc = _train(data, data["rgb_only"], out)
    return out, proc


def test_collator_zeroes_and_masks_missing_images_or_repeats_rgb():
    rgb, nir = Image.new("RGB", (8, 16), (250, 10, 10)), Image.new("RGB", (8, 16), (0, 0, 255))
    rows = [{"rgb": rgb, "nir": None, "tir": nir, "label": 0, "camid": 0},
            {"rgb": None, "nir": nir, "tir": nir, "label": 1, "camid": 1}]
    batch = ReIDCollator(image_size=(16, 8), train=True)(rows)
    assert batch["modality_mask"].tolist() == [[True, False, True], [False, True, True]]
    assert batch["modality_mask"].dtype == torch.bool
    assert torch.all(batch["pixel_values"][0, 1] == 0) and torch.all(batch["pixel_values"][1, 0] == 0)
    assert batch["pixel_values"][0, 0].abs().sum() > 0  # present images are the images
    filled = ReIDCollator(image_size=(16, 8), train=True, fill_missing_modalities="rgb")(rows)
    assert torch.equal(filled["pixel_values"][0, 1], filled["pixel_values"][0, 0])  # RGB repeated into NIR
    assert filled["modality_mask"].tolist() == [[True, True, True], [False, True, True]]  # no RGB: still masked
    complete = ReIDCollator(image_size=(16, 8), train=True)([dict(rows[0], nir=nir)])
    assert "modality_mask" not in complete  # complete data: the batch of before, unchanged


def test_rgb_only_arrow_data_trains_with_one_notice(masked_model):
    out, proc = masked_model
    assert [line for line in proc.stderr.splitlines() if NOTICE in line] != []
    assert sum(NOTICE in line for line in proc.stderr.splitlines()) == 1  # said once, at the start
    assert "Traceback" not in proc.stderr
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["global_step"] == 6 and final["mAP"] > 0
    assert "fill_missing_modalities" not in json.loads((out / "config.json").read_text())


def test_evaluating_rgb_only_data_is_the_masked_setting_on_complete_data(masked_model, data, tmp_path):
    """None images reach the model as modality_mask False: the same ranking as the complete data with NIR and TIR
    removed by eval.py's own missing-modality setting (paper Table 3, 'nt')."""
    model, _ = masked_model
    rgb_only = _eval(model, data["rgb_only"], tmp_path / "a")
    complete = _eval(model, data["complete"], tmp_path / "b", "--missing", "nt")
    assert sum(NOTICE in line for line in rgb_only["stderr"].splitlines()) == 1
    for name, metrics in rgb_only["results"].items():
        assert metrics["mAP"] == pytest.approx(complete["missing_sweep"]["settings"]["nt"][name]["mAP"], abs=1e-9)
    assert rgb_only["fill_missing_modalities"] == "none"
    # a setting that removes the only modality these rows have is refused before any work, in one line
    proc = _run("eval.py", "--model", model, "--dataset", data["rgb_only"], "--output", tmp_path / "c", "--missing",
                "r", "--no-progress")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("eval.py: error: --missing r:")
    assert not (tmp_path / "c").exists()


def test_embedding_rgb_only_arrow_data_and_a_folder_without_its_tir_subfolder(masked_model, data, tmp_path):
    model, _ = masked_model
    arrow_none_tir = tmp_path / "no-tir"
    dsd = datasets.load_from_disk(str(data["complete"]))
    _with(dsd, lambda r: {"tir": None}).save_to_disk(str(arrow_none_tir))
    proc = _run("data_scripts/embed.py", "--model", model, "--dataset", arrow_none_tir, "--split", "gallery",
                "--output", tmp_path / "emb-arrow", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum("no TIR image in any row" in line for line in proc.stderr.splitlines()) == 1
    # the same images as a folder of RGB / NI sub-folders, without TI
    folder = tmp_path / "photos"
    test = data["base"] / "raw" / "RGBNT201" / "test"
    for tag in ("RGB", "NI"):
        shutil.copytree(test / tag, folder / tag)
    proc = _run("data_scripts/embed.py", "--model", model, "--dataset", folder, "--output", tmp_path / "emb-folder",
                "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_arrow = datasets.load_from_disk(str(tmp_path / "emb-arrow"))
    from_folder = datasets.load_from_disk(str(tmp_path / "emb-folder"))
    assert from_folder["name"] == from_arrow["name"] == sorted(p.name for p in (test / "RGB").iterdir())
    np.testing.assert_allclose(np.asarray(from_folder["embedding"]), np.asarray(from_arrow["embedding"]), atol=1e-6)
    # and the TIR image really is left out: with it the embeddings differ
    proc = _run("data_scripts/embed.py", "--model", model, "--dataset", data["complete"], "--split", "gallery",
                "--output", tmp_path / "emb-complete", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with_tir = np.asarray(datasets.load_from_disk(str(tmp_path / "emb-complete"))["embedding"])
    assert np.abs(with_tir - np.asarray(from_arrow["embedding"])).max() > 1e-3


def test_fill_rgb_is_recorded_and_equals_copying_the_rgb_images(data, tmp_path):
    out = tmp_path / "filled"
    proc = _train(data, data["rgb_only"], out, "--fill-missing-modalities", "rgb")
    assert any(NOTICE in line and "RGB image is repeated" in line for line in proc.stderr.splitlines())
    assert json.loads((out / "config.json").read_text())["fill_missing_modalities"] == "rgb"
    filled = _eval(out, data["rgb_only"], tmp_path / "a")  # the checkpoint's setting applies
    copied = _eval(out, data["copied"], tmp_path / "b")
    assert filled["fill_missing_modalities"] == "rgb"
    for name, metrics in filled["results"].items():
        assert metrics["mAP"] == pytest.approx(copied["results"][name]["mAP"], abs=1e-9)
    masked = _eval(out, data["rgb_only"], tmp_path / "c", "--fill-missing-modalities", "none")  # overridden
    assert masked["fill_missing_modalities"] == "none"
    assert any(masked["results"][n]["mAP"] != filled["results"][n]["mAP"] for n in filled["results"])


def test_rows_without_any_image_are_refused_before_any_work(data, tmp_path):
    empty_row = tmp_path / "empty-row"
    dsd = datasets.load_from_disk(str(data["rgb_only"]))
    first = dsd["train"][0]["name"]
    datasets.DatasetDict({s: ds.map(lambda r: {"rgb": None} if r["name"] == first else {}) for s, ds in dsd.items()}
                         ).save_to_disk(str(empty_row))
    proc = _run("train.py", *tiny_train_args(), "--dataset", empty_row, "--output-dir", tmp_path / "out",
                "--max-steps", "2")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and err[-1].startswith("train.py: error: --dataset:"), err[-3:]
    assert "1 row(s) have no image in any modality" in err[-1] and first in err[-1]
    assert not (tmp_path / "out").exists()


def test_a_run_failing_on_its_first_batch_leaves_no_run_info(data, tmp_path):
    """An image that cannot be decoded fails the first batch: the output folder is not left with a run_info.json
    that would make it look like a previous run."""
    broken = tmp_path / "broken"
    dsd = datasets.load_from_disk(str(data["complete"]))
    raw = {s: ds.cast_column("nir", datasets.Image(decode=False)) for s, ds in dsd.items()}
    datasets.DatasetDict({s: ds.map(lambda r: {"nir": {"bytes": b"not an image", "path": None}}).cast(dsd[s].features)
                          for s, ds in raw.items()}).save_to_disk(str(broken))
    out = tmp_path / "out"
    proc = _run("train.py", *tiny_train_args(), "--dataset", broken, "--output-dir", out, "--num-identities", "4",
                "--num-instances", "2", "--max-steps", "2")
    assert proc.returncode != 0 and "cannot identify image file" in proc.stderr
    assert not (out / "run_info.json").exists() and not out.exists()


class _CountingHub:
    """An HTTP server that answers every request 503 and counts them (a Hub that is down)."""

    def __init__(self):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                outer.requests.append(self.path)
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_mistyped_dataset_path_fails_at_once_without_asking_the_hub(tmp_path, monkeypatch):
    hub = _CountingHub()
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub.url)
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        (tmp_path / "data" / "rgbnt201").mkdir(parents=True)
        monkeypatch.chdir(tmp_path)
        # "data/rgbnt20l" reads like user/name, but data/ is a local folder: a typo, no Hub request
        with pytest.raises(FileNotFoundError, match=r"no such folder.*did you mean data/rgbnt201\?"):
            open_reid_dataset("data/rgbnt20l")
        assert hub.requests == []
        # a user/name that is neither local nor on the (unreachable) Hub: asked once, not retried
        with pytest.raises(FileNotFoundError, match="tester/not-here is neither a local folder nor a Hub dataset"):
            open_reid_dataset("tester/not-here")
        assert len([r for r in hub.requests if "tester/not-here" in r]) == 1  # (the client may ask other things)
    finally:
        hub.close()
