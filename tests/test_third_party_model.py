"""A model family this project has never seen, written as remote code outside the project, goes through the same
train.py and eval.py, is saved, and reloads in a fresh process: no edit to the project (docs/interfaces.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_dataset

REPO = Path(__file__).resolve().parents[1]

# A tower + BN-neck baseline: one CLIP image tower over the three modality images, the three pooled features
# concatenated, one BN-neck + classifier. It imports only torch and transformers.
CONFIGURATION = '''
from transformers import CLIPVisionConfig, PretrainedConfig


class BaselineConfig(PretrainedConfig):
    model_type = "baseline_reid"

    def __init__(self, vision_config=None, image_size=(32, 16), num_cameras=0, neck_momentum=0.1, **kwargs):
        if isinstance(vision_config, dict):
            vision_config = CLIPVisionConfig(**{k: v for k, v in vision_config.items() if k != "model_type"})
        self.vision_config = vision_config or CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=8,
            image_size=32)
        self.image_size = tuple(image_size)
        self.num_cameras = num_cameras
        self.neck_momentum = neck_momentum
        super().__init__(**kwargs)
'''
MODELING = '''
from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPVisionModel, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from .configuration_baseline import BaselineConfig


@dataclass
class BaselineOutput(ModelOutput):
    embeddings: torch.Tensor = None
    logits: dict = None
    features: dict = None
    feature_sets: dict = None


class BaselineModel(PreTrainedModel):
    config_class = BaselineConfig
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        config.vision_config.image_size = max(config.image_size)
        self.vision_tower = CLIPVisionModel(config.vision_config)
        width = 3 * config.vision_config.hidden_size
        self.neck = nn.BatchNorm1d(width, momentum=config.neck_momentum)
        self.classifier = nn.Linear(width, config.num_labels, bias=False)
        self.post_init()

    def forward(self, pixel_values, camera_ids=None, modality_mask=None):
        if modality_mask is not None:
            pixel_values = pixel_values * modality_mask[:, :, None, None, None].to(pixel_values.dtype)
        batch = pixel_values.shape[0]
        pooled = self.vision_tower(pixel_values=pixel_values.flatten(0, 1), interpolate_pos_encoding=True).pooler_output
        feature = pooled.view(batch, -1)
        return BaselineOutput(embeddings=feature, logits={"global": self.classifier(self.neck(feature))},
                              features={"global": feature}, feature_sets={"global": feature})


BaselineConfig.register_for_auto_class()
BaselineModel.register_for_auto_class("AutoModel")
'''
WRITE_TEMPLATE = '''
import sys
sys.path.insert(0, {folder!r})
import torch
from baseline.modeling_baseline import BaselineModel
from baseline.configuration_baseline import BaselineConfig
torch.manual_seed(0)
BaselineModel(BaselineConfig(num_labels=2)).save_pretrained({template!r})
'''
# Loads the trained checkpoint with nothing of the project importable, and embeds a fixed input.
RELOAD = '''
import sys
import importlib.abc


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("demo_reid", "configuration_demo", "modeling_demo", "baseline"):
            raise ImportError(f"{{name}} is blocked in this process")


sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ("", {repo!r})]
import torch
from safetensors.torch import save_file
from transformers import AutoModel
model = AutoModel.from_pretrained({checkpoint!r}, trust_remote_code=True).eval()
pixels = torch.rand(2, 3, 3, 32, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
with torch.no_grad():
    save_file({{"embeddings": model(pixels).embeddings}}, {out!r})
print(type(model).__name__, type(model).__module__)
'''


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The new family's code in a package outside the project, and a save_pretrained folder of it (auto_map)."""
    base = tmp_path_factory.mktemp("outside")
    package = base / "baseline"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "configuration_baseline.py").write_text(CONFIGURATION)
    (package / "modeling_baseline.py").write_text(MODELING)
    folder = base / "baseline-reid"
    code = WRITE_TEMPLATE.format(folder=str(base), template=str(folder))
    proc = subprocess.run([sys.executable, "-c", code], cwd=base, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"].endswith("BaselineModel")
    return folder


def test_a_remote_code_model_trains_evaluates_and_reloads(template, tmp_path):
    dataset = build_tiny_dataset(tmp_path / "data", seed=5, num_train_ids=6, num_test_ids=4, images_per_id=5)
    out, report_dir = tmp_path / "trained", tmp_path / "eval"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    train = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--model", str(template), "--dataset", dataset, "--image-size", "32",
         "16", "--config-overrides", "neck_momentum=0.2", "--num-identities", "3", "--num-instances", "2",
         "--max-steps", "4", "--save-strategy", "no", "--disable-tqdm", "true", "--output-dir", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "baseline_reid" and config["neck_momentum"] == 0.2
    from demo_reid.data.loading import load_reid_dataset

    ds = load_reid_dataset(dataset)
    cameras = 1 + max(max(ds[s]["camid"]) for s in ("train", "query", "gallery"))
    assert (len(config["id2label"]), config["num_cameras"], config["image_size"]) == (6, cameras, [32, 16])
    assert {"modeling_baseline.py", "configuration_baseline.py", "model.safetensors"} <= {p.name for p in out.iterdir()}
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["global_step"] == 4

    from safetensors.torch import load_file

    trained, initial = load_file(out / "model.safetensors"), load_file(template / "model.safetensors")
    moved = [k for k in initial if k in trained and trained[k].shape == initial[k].shape
             and not torch.equal(trained[k], initial[k])]
    assert any(k.startswith("vision_tower.") for k in moved)  # the tower trained

    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), "--model", str(out), "--dataset", dataset,
                           "--output", str(report_dir), "--no-progress", "--no-complexity"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((report_dir / "eval_results.json").read_text())
    assert report["model_type"] == "baseline_reid" and list(report["results"]) == ["global"]
    assert report["results"]["global"]["mAP"] == pytest.approx(final["mAP"], abs=1e-6)

    fresh = tmp_path / "fresh.safetensors"
    code = RELOAD.format(repo=str(REPO), checkpoint=str(out), out=str(fresh))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == "BaselineModel"
    from transformers import AutoModel

    model = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    pixels = torch.rand(2, 3, 3, 32, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected = model(pixels).embeddings
    torch.testing.assert_close(load_file(fresh)["embeddings"], expected, rtol=0, atol=0)
