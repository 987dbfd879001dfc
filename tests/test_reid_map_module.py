"""The `evaluate` module: same numbers as `mmreid.evaluation.metrics`, reported like eval.py, self-contained, and
an `evaluate` Space as it is (card YAML, app.py with evaluate's widget, requirements.txt; pushed to the fake Hub and
loaded back by id)."""

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import evaluate
import numpy as np
import pytest

from mmreid.evaluation.metrics import METRIC_KEYS, reid_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE = str(REPO_ROOT / "metrics" / "reid_map")
MODULE_FILE = REPO_ROOT / "metrics" / "reid_map" / "reid_map.py"
# Everything the module may import: what a Hub-hosted metric can count on.
ALLOWED_IMPORTS = {"numpy", "datasets", "evaluate"} | set(sys.stdlib_module_names)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def random_case(seed, num_q=15, num_g=40, num_ids=6, levels=5):
    """Integer distances in [0, levels): many ties, so tie-breaking by gallery order matters."""
    rng = np.random.default_rng(seed)
    return dict(
        dist=rng.integers(0, levels, (num_q, num_g)).astype(np.float64),
        q_pids=rng.integers(0, num_ids, num_q), g_pids=rng.integers(0, num_ids, num_g),
        q_cams=rng.integers(0, 3, num_q), g_cams=rng.integers(0, 3, num_g),
        q_scenes=rng.integers(0, 2, num_q), g_scenes=rng.integers(0, 2, num_g),
    )


def in_percent(ref):
    """The reference's fractions as eval.py reports them."""
    cmc = 100.0 * np.asarray(ref["cmc"])
    out = {"mAP": 100.0 * ref["mAP"], "mINP": 100.0 * ref["mINP"]}
    out.update({f"Rank-{k}": cmc[k - 1] for k in (1, 5, 10) if k <= len(cmc)})
    return out, cmc


def assert_matches(got, ref):
    expected, cmc = in_percent(ref)
    assert set(got) == set(METRIC_KEYS) | {"cmc", "num_valid_queries"}
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
    np.testing.assert_allclose(got["cmc"], cmc, atol=1e-9)
    assert got["num_valid_queries"] == ref["num_valid_queries"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_camera_config_matches_reference(seed):
    c = random_case(seed)
    module = evaluate.load(MODULE)
    got = module.compute(predictions=c["dist"].tolist(), references=c["q_pids"], query_camids=c["q_cams"],
                         gallery_pids=c["g_pids"], gallery_camids=c["g_cams"], max_rank=12)
    ref = reid_metrics(c["dist"], c["q_pids"], c["g_pids"], c["q_cams"], c["g_cams"], max_rank=12)
    assert_matches(got, ref)
    assert len(got["cmc"]) == 12


@pytest.mark.parametrize("seed", [0, 3])
def test_scene_config_with_add_batch_matches_reference(seed):
    c = random_case(seed)
    module = evaluate.load(MODULE, "scene")
    for start in range(0, 15, 4):  # query rows arrive in batches
        sl = slice(start, start + 4)
        module.add_batch(predictions=c["dist"][sl].tolist(), references=c["q_pids"][sl],
                         query_camids=c["q_cams"][sl], query_sceneids=c["q_scenes"][sl])
    got = module.compute(gallery_pids=c["g_pids"], gallery_camids=c["g_cams"], gallery_sceneids=c["g_scenes"])
    ref = reid_metrics(c["dist"], c["q_pids"], c["g_pids"], c["q_cams"], c["g_cams"], c["q_scenes"], c["g_scenes"])
    assert_matches(got, ref)
    cam = reid_metrics(c["dist"], c["q_pids"], c["g_pids"], c["q_cams"], c["g_cams"])
    assert abs(cam["mAP"] - ref["mAP"]) > 1e-6  # the case really distinguishes the protocols


def test_continuous_distances_and_skipped_queries():
    """Real-valued distances, and queries whose only same-identity entries are junk (skipped)."""
    rng = np.random.default_rng(7)
    dist = rng.random((10, 25))
    q_pids, g_pids = rng.integers(0, 4, 10), rng.integers(0, 4, 25)
    q_cams, g_cams = np.zeros(10, int), rng.integers(0, 2, 25)
    g_cams[g_pids == q_pids[0]] = 0  # query 0's identity only in its own camera: no valid match
    module = evaluate.load(MODULE)
    got = module.compute(predictions=dist.tolist(), references=q_pids, query_camids=q_cams,
                         gallery_pids=g_pids, gallery_camids=g_cams)
    ref = reid_metrics(dist, q_pids, g_pids, q_cams, g_cams)
    assert ref["num_valid_queries"] < 10
    assert_matches(got, ref)
    assert len(got["cmc"]) == 25  # max_rank 50 capped at the gallery size


def test_hand_checked_percent_values():
    """One query (pid 1, cam 0); by distance the gallery reads
    pid 2, pid 1 (cam 1), pid 1 (cam 0: junk), pid 1 (cam 1)."""
    module = evaluate.load(MODULE)
    got = module.compute(predictions=[[0.2, 0.1, 0.3, 0.3]], references=[1], query_camids=[0],
                         gallery_pids=[1, 2, 1, 1], gallery_camids=[1, 0, 0, 1])
    # once the junk entry is removed the true matches sit at ranks 2 and 3
    assert got["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert got["Rank-1"] == 0.0
    assert got["mINP"] == pytest.approx(100 * 2 / 3)
    assert got["cmc"] == pytest.approx([0.0, 100.0, 100.0, 100.0])
    assert "Rank-5" not in got and "Rank-10" not in got  # the gallery has only 4 entries


def test_bad_input_is_a_clear_error():
    module = evaluate.load(MODULE)
    with pytest.raises(ValueError, match="pass gallery_pids= and gallery_camids="):
        module.compute(predictions=[[0.1, 0.2]], references=[1], query_camids=[0])
    module = evaluate.load(MODULE)
    with pytest.raises(ValueError, match="gallery_pids must be a flat list of 2 ids"):
        module.compute(predictions=[[0.1, 0.2]], references=[1], query_camids=[0], gallery_pids=[1],
                       gallery_camids=[1, 1])
    module = evaluate.load(MODULE)
    with pytest.raises(ValueError, match="no query has a true match"):
        module.compute(predictions=[[0.1, 0.2]], references=[1], query_camids=[0], gallery_pids=[1, 2],
                       gallery_camids=[0, 1])
    module = evaluate.load(MODULE)
    with pytest.raises(ValueError, match="NaN"):
        module.compute(predictions=[[float("nan"), 0.2]], references=[1], query_camids=[0], gallery_pids=[1, 2],
                       gallery_camids=[1, 1])


def test_module_imports_only_hub_safe_packages():
    tree = ast.parse(MODULE_FILE.read_text())
    top = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the module"
            top.add(node.module.split(".")[0])
    assert top <= ALLOWED_IMPORTS, top - ALLOWED_IMPORTS


# Loads the module from a copy of its folder, outside the repository, with the repository's own
# modules made unimportable (an editable install could otherwise still provide them).
_ISOLATED = r"""
import importlib.abc, json, sys
BLOCKED = {"mmreid", "modeling_reid", "configuration_reid", "modeling_demo", "configuration_demo", "modeling_next",
           "configuration_next", "train", "eval"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"repository module {name} imported")
sys.meta_path.insert(0, Block())
import evaluate
m = evaluate.load(sys.argv[1])
out = m.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 2], query_camids=[0, 0],
                gallery_pids=[1, 2], gallery_camids=[1, 1])
print(json.dumps(out))
"""


def test_module_loads_outside_the_repository(tmp_path):
    folder = tmp_path / "reid_map"
    folder.mkdir()
    (folder / "reid_map.py").write_text(MODULE_FILE.read_text())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _ISOLATED, str(folder)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["mAP"] == 100.0 and out["Rank-1"] == 100.0 and out["mINP"] == 100.0


SPACE_DIR = REPO_ROOT / "metrics" / "reid_map"


def _widget_table(rows):
    """The table evaluate's Gradio widget hands its function: one row per query, list cells as JSON text."""
    import pandas as pd

    return pd.DataFrame([{key: json.dumps(value) if isinstance(value, list) else value for key, value in row.items()}
                         for row in rows])


def test_space_card_app_and_requirements():
    """The card's YAML is a Gradio Space's (parsed with huggingface_hub), app.py feeds evaluate's widget the module
    with the gallery columns, and the table the widget builds computes what compute() does."""
    from evaluate.utils.gradio import infer_gradio_input_types, parse_gradio_data
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(SPACE_DIR / "README.md")
    data = card.data.to_dict()
    assert data["sdk"] == "gradio" and data["app_file"] == "app.py" and (SPACE_DIR / data["app_file"]).is_file()
    assert int(data["sdk_version"].split(".")[0]) == 3  # evaluate's widget builds gr.inputs.Dataframe (gradio 3)
    assert {"evaluate", "metric"} <= set(data["tags"]) and data["title"] and data["description"]
    requirements = [line for line in (SPACE_DIR / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert "evaluate==0.4.6" in requirements and "numpy<2" in requirements  # gradio 3.50 needs numpy 1
    assert "launch_gradio_widget(WithGalleryColumns(evaluate.load(str(MODULE_FILE))))" in (SPACE_DIR / "app.py").read_text()

    spec = importlib.util.spec_from_file_location("reid_map_space_app", SPACE_DIR / "app.py")  # not run as __main__
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    c = random_case(4, num_q=5, num_g=12)
    widget = app.WithGalleryColumns(evaluate.load(str(app.MODULE_FILE)))
    assert list(widget.features)[-2:] == ["gallery_pids", "gallery_camids"] and widget.name == "reid_map"
    rows = [{"predictions": c["dist"][i].tolist(), "references": int(c["q_pids"][i]),
             "query_camids": int(c["q_cams"][i]), "gallery_pids": c["g_pids"].tolist(),
             "gallery_camids": c["g_cams"].tolist()} for i in range(5)]
    kinds = infer_gradio_input_types(widget.features.values())
    got = widget.compute(**parse_gradio_data(_widget_table(rows), kinds))
    direct = evaluate.load(MODULE).compute(predictions=c["dist"].tolist(), references=c["q_pids"],
                                           query_camids=c["q_cams"], gallery_pids=c["g_pids"],
                                           gallery_camids=c["g_cams"])
    assert got == direct


def test_space_pushed_to_the_hub_loads_by_id(tmp_path):
    """The folder uploaded as a Space to the fake Hub; evaluate.load("<user>/reid_map") in a fresh process gives
    the numbers of the local module."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from fake_hub import FakeHub

    code = ("import json, evaluate; from huggingface_hub import HfApi; api = HfApi();"
            "api.create_repo('tester/reid_map', repo_type='space', space_sdk='gradio');"
            f"api.upload_folder(repo_id='tester/reid_map', repo_type='space', folder_path={str(SPACE_DIR)!r},"
            "ignore_patterns=['__pycache__/*']);"
            "m = evaluate.load('tester/reid_map');"
            "print(json.dumps(m.compute(predictions=[[0.2, 0.1, 0.3, 0.3]], references=[1], query_camids=[0],"
            "gallery_pids=[1, 2, 1, 1], gallery_camids=[1, 0, 0, 1])))")
    with FakeHub() as hub:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_TOKEN="hf_dummy", HF_HOME=str(tmp_path / "hf_home"),
                   HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
                   HF_MODULES_CACHE=str(tmp_path / "modules"))
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert sorted(hub.files("space", "tester/reid_map")) == ["README.md", "app.py", "reid_map.py",
                                                                 "requirements.txt"]
        assert hub.unhandled == []
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2) and got["cmc"] == [0.0, 100.0, 100.0, 100.0]
