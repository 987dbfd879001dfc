"""The `evaluate` module loads offline from its folder and returns what `reid_metrics` returns."""

from pathlib import Path

import evaluate
import numpy as np
import pytest

from demo_reid.metrics import reid_metrics

MODULE = str(Path(__file__).resolve().parents[1] / "metrics" / "reid_map")


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    dist = rng.integers(0, 5, (12, 30)).astype(np.float64)  # tie-heavy
    return dict(
        dist=dist,
        q_pids=rng.integers(0, 6, 12), g_pids=rng.integers(0, 6, 30),
        q_cams=rng.integers(0, 3, 12), g_cams=rng.integers(0, 3, 30),
        q_scenes=rng.integers(0, 2, 12), g_scenes=rng.integers(0, 2, 30),
    )


def test_camera_config_matches_function(case, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    module = evaluate.load(MODULE)
    got = module.compute(
        predictions=case["dist"].tolist(), references=case["q_pids"], query_camids=case["q_cams"],
        gallery_pids=case["g_pids"], gallery_camids=case["g_cams"], max_rank=10,
    )
    ref = reid_metrics(case["dist"], case["q_pids"], case["g_pids"], case["q_cams"], case["g_cams"], max_rank=10)
    assert got["mAP"] == pytest.approx(ref["mAP"], abs=1e-9)
    assert got["mINP"] == pytest.approx(ref["mINP"], abs=1e-9)
    assert got["rank-1"] == pytest.approx(ref["cmc"][0], abs=1e-9)
    np.testing.assert_allclose(got["cmc"], ref["cmc"], atol=1e-9)


def test_scene_config_with_add_batch_matches_function(case, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    module = evaluate.load(MODULE, "scene")
    for start in range(0, 12, 5):  # query rows arrive in batches
        sl = slice(start, start + 5)
        module.add_batch(predictions=case["dist"][sl].tolist(), references=case["q_pids"][sl],
                         query_camids=case["q_cams"][sl], query_sceneids=case["q_scenes"][sl])
    got = module.compute(gallery_pids=case["g_pids"], gallery_camids=case["g_cams"], gallery_sceneids=case["g_scenes"])
    ref = reid_metrics(case["dist"], case["q_pids"], case["g_pids"], case["q_cams"], case["g_cams"],
                       case["q_scenes"], case["g_scenes"])
    cam = reid_metrics(case["dist"], case["q_pids"], case["g_pids"], case["q_cams"], case["g_cams"])
    assert got["mAP"] == pytest.approx(ref["mAP"], abs=1e-9)
    assert got["num_valid_queries"] == ref["num_valid_queries"]
    assert abs(cam["mAP"] - ref["mAP"]) > 1e-6  # the case really distinguishes the protocols


def test_missing_gallery_metadata_is_a_clear_error(case, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    module = evaluate.load(MODULE)
    with pytest.raises(ValueError, match="pass gallery_pids= and gallery_camids="):
        module.compute(predictions=[[0.1, 0.2]], references=[1], query_camids=[0])
