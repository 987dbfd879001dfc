"""The model card train.py writes: Hub metadata read back with huggingface_hub, results equal to eval.py's."""

import json
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_dataset, tiny_train_args
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import eval as eval_script  # noqa: E402
import train  # noqa: E402
from mmreid.hub.backbones import hub_id_of  # noqa: E402
from mmreid.hub.model_card import BEST_ON_TEST, ModelCardInfo, build_model_card  # noqa: E402

TINY = [*tiny_train_args(), "--num-identities", "4", "--num-instances", "2", "--per-device-eval-batch-size", "16",
        "--num-train-epochs", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("card-synthetic"), seed=2, num_train_ids=6, num_test_ids=4,
                              images_per_id=4, name="rgbnt201-mini")


def test_card_of_a_training_run_parses_and_reports_eval_py_numbers(dataset, tmp_path):
    out = tmp_path / "demo-mini"
    train.main([*TINY, "--dataset", dataset, "--output-dir", str(out), "--select-best-on-test",
                "--eval-strategy", "epoch", "--save-strategy", "epoch"])
    card = ModelCard.load(out / "README.md")

    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-feature-extraction"
    assert {"re-identification", "multi-modal", "demo"} <= set(card.data.tags)
    assert card.data.license == "other" and card.data.license_name == "research-only"  # real-dataset path
    assert card.data.base_model is None  # a random-init tower has no Hub parent

    # The library's own model-index parsing, from the raw YAML.
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "demo-mini"
    by_metric = {r.metric_type: r for r in results}
    assert set(by_metric) == {"map", "rank-1"}
    for result in results:
        assert result.task_type == "image-feature-extraction" and result.dataset_split == "test"
        assert result.dataset_name == "RGBNT201"  # recorded by build_dataset, not the folder name
        assert result.metric_args["selection"] == BEST_ON_TEST and BEST_ON_TEST in result.metric_name

    # The numbers are what eval.py measures on the saved checkpoint (an independent extraction and ranking).
    report_dir = tmp_path / "eval"
    assert eval_script.main(["--model", str(out), "--dataset", dataset, "--output", str(report_dir),
                             "--no-progress", "--no-complexity"]) == 0
    report = json.loads((report_dir / "eval_results.json").read_text())
    measured = report["results"][report["headline_features"]]
    assert by_metric["map"].metric_value == pytest.approx(measured["mAP"], abs=0.006)
    assert by_metric["rank-1"].metric_value == pytest.approx(measured["Rank-1"], abs=0.006)
    assert f"| mAP | {measured['mAP']:.2f} |" in card.text

    # Usage: the processor and the model, from this checkpoint, with camera ids (the model has cameras).
    assert "AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)" in card.text
    assert 'checkpoint = "path/to/demo-mini"' in card.text and "camera_ids=[0]" in card.text


def _info(**overrides):
    fields = dict(model_type="next_reid", name="next-rgbnt201", repo_id="someone/next-rgbnt201",
                  dataset_name="RGBNT201", dataset_description="RGBNT201", backbone="openai/clip-vit-base-patch16",
                  base_model="openai/clip-vit-base-patch16", metrics={"mAP": 81.234, "Rank-1": 85.0, "mINP": 60.0},
                  uses_text=True, research_only_data=False, dataset_id="someone/rgbnt201")
    return ModelCardInfo(**(fields | overrides))


def test_card_metadata_round_trips_through_the_hub_parser(tmp_path):
    path = tmp_path / "README.md"
    build_model_card(_info()).save(path)
    card = ModelCard.load(path)
    assert card.data.base_model == "openai/clip-vit-base-patch16"
    assert card.data.license == "apache-2.0" and card.data.datasets == ["someone/rgbnt201"]
    assert {"next", "text-modulated"} <= set(card.data.tags)
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {"map": 81.23, "rank-1": 85.0}  # mINP stays in the text table, not in model-index
    assert all(r.dataset_type == "someone/rgbnt201" for r in card.data.eval_results)
    assert 'text=["caption of the RGB image", "", ""]' in card.text  # NEXT usage passes captions
    assert "camera_ids" not in card.text  # this model has no cameras
    assert "## Our reading of the paper" in card.text and "## Citation" in card.text


def test_card_without_results_has_no_model_index(tmp_path):
    path = tmp_path / "README.md"
    build_model_card(_info(metrics={})).save(path)
    card = ModelCard.load(path)
    assert not card.data.eval_results and "model-index" not in card.data.to_dict()


@pytest.mark.parametrize("backbone, expected", [
    ("openai/clip-vit-base-patch16", "openai/clip-vit-base-patch16"),
    ("tiny", None),
    ("not a hub id", None),
])
def test_base_model_from_backbone_name(backbone, expected):
    assert hub_id_of(backbone) == expected


def test_base_model_from_a_local_checkpoint(tmp_path):
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"_name_or_path": "openai/clip-vit-base-patch16"}))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    assert hub_id_of(str(tmp_path / "clip")) == "openai/clip-vit-base-patch16"
    assert hub_id_of(str(tmp_path / "plain")) is None
