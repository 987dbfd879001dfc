"""The dataset card build_dataset.py writes beside the Arrow data and pushes with --push-to-hub (to a fake Hub)."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard

import datasets
from mmreid.data.builder import build_dataset
from mmreid.data.releases import RELEASES
from mmreid.hub.dataset_card import make_dataset_card
from mmreid.data.synthetic import make_synthetic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "data_scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_dataset as build_script  # noqa: E402
from fake_hub import FakeHub  # noqa: E402

SMALL = dict(num_train_ids=4, num_test_ids=3, images_per_id=4, image_size=(16, 8))
REPO_ID = "tester/rgbnt201-tiny"


def _table(text: str, heading: str) -> list[list[str]]:
    """The body rows of the markdown table under ``## heading``."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_synthetic("RGBNT201", tmp_path_factory.mktemp("raw"), seed=3, **SMALL)


def test_card_lies_beside_the_data_and_describes_it(raw, tmp_path, capsys):
    out = tmp_path / "out" / "rgbnt201"
    argv = ["--name", "RGBNT201", "--root", str(raw), "--output", str(out), "--captions", str(raw / "captions")]
    assert build_script.main(argv) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["rgbnt201"]  # no temp folders left
    dsd = datasets.load_from_disk(str(out))  # the README.md in the folder does not disturb loading
    assert list(dsd) == ["train", "query", "gallery"]

    card = DatasetCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "other" and data["task_categories"] == ["image-feature-extraction"]
    assert {"re-identification", "multi-modal", "person-re-identification"} <= set(data["tags"])
    assert "RGBNT201" in data["pretty_name"] and data["size_categories"] == ["n<1K"]
    assert "dataset_info" not in data and "configs" not in data  # datasets adds those on the Hub, not here

    # splits: rows, identities and cameras equal what the saved dataset holds, counted here independently
    splits = {row[0]: [int(v) for v in row[1:]] for row in _table(card.text, "Splits")}
    assert splits == {s: [len(dsd[s]), len(set(dsd[s]["pid"])), len(set(dsd[s]["camid"]))] for s in dsd}
    assert len(dsd["train"]) != len(dsd["query"])  # so a swapped row could not pass

    # columns: every column of every split, its type and the splits holding it
    columns = {row[0].strip("`"): row[1:] for row in _table(card.text, "Columns")}
    expected = {c for s in dsd for c in dsd[s].column_names}
    assert set(columns) == expected and {"caption_rgb", "caption_nir", "caption_tir"} <= expected
    for name in expected:
        kind, where, meaning = columns[name]
        assert kind == ("image" if name in ("rgb", "nir", "tir") else dsd["train"].features[name].dtype)
        assert where == ("train" if name == "label" else "all") and meaning, name

    text = card.text
    assert "research use only" in text and "original authors" in text and "terms of use" in text
    assert "http" not in str(card)  # links nothing: no download location, no paper URL
    assert RELEASES["RGBNT201"].source.bibtex in text and "Robust Multi-Modality Person Re-identification" in text
    assert "python data_scripts/build_dataset.py --name RGBNT201" in text and f"--output {out}" in text
    assert f'load_from_disk("{out}")' in text and "load_dataset(" not in text  # not pushed: no Hub example
    assert "`query` and `gallery` are the same rows" in text  # RGBNT201: both are the test folder


@pytest.mark.parametrize("name, title, subject", [
    ("RGBNT100", "Multi-Spectral Vehicle Re-Identification: A Challenge", "vehicle"),
    ("MSVR310", "Cross-directional Consistency Network and a High-quality Benchmark", "vehicle"),
    ("MSVWild863", "Magic Tokens: Select Diverse Tokens for Multi-modal Object Re-Identification", "vehicle"),
])
def test_each_release_cites_the_paper_that_introduced_it(name, title, subject, tmp_path):
    layout = "WMVEID863" if name == "MSVWild863" else name
    root = make_synthetic(layout, tmp_path / "raw", **SMALL)
    card = make_dataset_card(build_dataset(name, root, cache_dir=tmp_path / "cache"), name, repo_id="someone/x")
    bibtex = card.text.split("```bibtex\n", 1)[1].split("```", 1)[0]
    assert title in bibtex and bibtex.count("@") == 1 and "doi" not in bibtex.lower() and "url" not in bibtex.lower()
    assert f"{subject}-re-identification" in card.data.tags and card.text.startswith(f"\n# {layout}\n")
    assert 'load_dataset("someone/x")' in card.text
    assert "are the same rows" not in card.text  # the vehicle releases have separate query and gallery folders


def test_bad_repo_id_is_one_line_before_anything_is_written(raw, tmp_path, capsys):
    out = tmp_path / "out"
    code = build_script.main(["--name", "RGBNT201", "--root", str(raw), "--output", str(out), "--push-to-hub", "a/b/c"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("build_dataset.py: error: --push-to-hub a/b/c"), err
    assert not out.exists()


def test_failed_push_is_one_line_and_keeps_the_local_copy(raw, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # every Hub request now fails
    out = tmp_path / "out"
    code = build_script.main(["--name", "RGBNT201", "--root", str(raw), "--output", str(out), "--push-to-hub", REPO_ID])
    err = capsys.readouterr().err.strip().splitlines()  # progress bars of the build, then the error
    errors = [line for line in err if "error" in line.lower()]
    assert code == 1 and errors == err[-1:], err
    assert err[-1].startswith(f"build_dataset.py: error: --push-to-hub {REPO_ID}: "), err
    assert "offline" in err[-1] and str(out) in err[-1]
    assert (out / "README.md").is_file() and len(datasets.load_from_disk(str(out))["train"]) > 0


def test_push_to_hub_keeps_our_card_and_adds_the_datasets_metadata(raw, tmp_path):
    out = tmp_path / "out"
    with FakeHub() as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0", HF_TOKEN="hf_dummy",
                   HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
                   OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, str(REPO / "data_scripts" / "build_dataset.py"), "--name", "RGBNT201",
                               "--root", str(raw), "--output", str(out), "--push-to-hub", REPO_ID],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert hub.unhandled == []
        # card first (alone), then the data with datasets' card update
        assert [c["added"] for c in hub.commits] == [
            ["README.md"], [*(f"data/{s}-00000-of-00001.parquet" for s in ("train", "query", "gallery")), "README.md"]]
        pushed = DatasetCard(hub.file("dataset", REPO_ID, "README.md").decode())
        parquet = {s: hub.file("dataset", REPO_ID, f"data/{s}-00000-of-00001.parquet") for s in ("train", "query")}

    local = DatasetCard.load(out / "README.md")
    assert pushed.text == local.text  # our text, untouched
    assert f'load_dataset("{REPO_ID}")' in local.text
    meta = pushed.data.to_dict()
    for key, value in local.data.to_dict().items():  # our metadata kept ...
        assert meta[key] == value, key
    dsd = datasets.load_from_disk(str(out))  # ... and datasets' added, with the real counts
    assert {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]} == {s: len(dsd[s]) for s in dsd}
    assert [f["name"] for f in meta["dataset_info"]["features"]] == dsd["train"].column_names
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": s, "path": f"data/{s}-*"} for s in ("train", "query", "gallery")]}]

    # one schema on the Hub: query / gallery carry label -1; train keeps its labels
    import pyarrow.parquet as pq

    train, query = (pq.read_table(io.BytesIO(parquet[s])) for s in ("train", "query"))
    assert train.column_names == query.column_names == dsd["train"].column_names
    assert train.column("label").to_pylist() == dsd["train"]["label"]
    assert set(query.column("label").to_pylist()) == {-1} and query.column("name").to_pylist() == dsd["query"]["name"]
    assert "label" not in dsd["query"].column_names  # the local copy is unchanged
    assert re.search(r"pushed to the dataset repo " + re.escape(REPO_ID), proc.stdout)
