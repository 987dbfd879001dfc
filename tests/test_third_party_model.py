"""A model family this project has never seen, written as remote code outside the project, goes through the same
train.py and eval.py, is saved, and reloads in a fresh process: no edit to the project (docs/interfaces.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import IMPORT_BLOCKER, build_tiny_dataset

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
'''
# The registration a module may carry itself (shape "registered_in_module").
REGISTRATION = '''

BaselineConfig.register_for_auto_class()
BaselineModel.register_for_auto_class("AutoModel")
'''
# The user's script that saves the model folder: `register_for_auto_class` before `save_pretrained`, as the
# transformers docs on custom models show (shapes whose module does not register itself).
WRITE_TEMPLATE = '''
import sys
sys.path.insert(0, {folder!r})
import torch
from {config_module} import BaselineConfig
from {model_module} import BaselineModel
{register}
torch.manual_seed(0)
BaselineModel(BaselineConfig(num_labels=2)).save_pretrained({template!r})
'''
SCRIPT_REGISTRATION = 'BaselineConfig.register_for_auto_class()\nBaselineModel.register_for_auto_class("AutoModel")'
# shape -> (files written outside the project: name -> code, config module, model module, registers in the script)
SHAPES = {
    "package_registered_in_script": (
        {"baseline/__init__.py": "", "baseline/configuration_baseline.py": CONFIGURATION,
         "baseline/modeling_baseline.py": MODELING},
        "baseline.configuration_baseline", "baseline.modeling_baseline", True),
    "package_registered_in_module": (
        {"baseline/__init__.py": "", "baseline/configuration_baseline.py": CONFIGURATION,
         "baseline/modeling_baseline.py": MODELING + REGISTRATION},
        "baseline.configuration_baseline", "baseline.modeling_baseline", False),
    "single_file": (
        {"baseline/__init__.py": "",
         "baseline/baseline_single.py": CONFIGURATION + MODELING.replace(
             "from .configuration_baseline import BaselineConfig\n", "")},
        "baseline.baseline_single", "baseline.baseline_single", True),
}


def code_files(shape: str) -> set[str]:
    """The model's code files every saved folder must hold."""
    return {Path(name).name for name in SHAPES[shape][0] if not name.endswith("__init__.py")}


# Loads the trained checkpoint with nothing of the project (nor the model's package) importable: AutoModel and the
# checkpoint's pipeline embed fixed inputs.
RELOAD = IMPORT_BLOCKER + '''sys.path = [p for p in sys.path if p not in ("", {repo!r})]
try:
    import mmreid
    raise SystemExit("the project is importable")
except ImportError:
    pass
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModel, pipeline
model = AutoModel.from_pretrained({checkpoint!r}, trust_remote_code=True).eval()
pixels = torch.rand(2, 3, 3, 32, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
rng = np.random.default_rng(0)
images = [[Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)) for _ in range(3)] for _ in range(2)]
pipe = pipeline("image-feature-extraction", model={checkpoint!r}, trust_remote_code=True)
rows = pipe(images)
with torch.no_grad():
    save_file({{"embeddings": model(pixels).embeddings,
               "pipeline": torch.stack([torch.as_tensor(r["embedding"]) for r in rows])}}, {out!r})
print(type(model).__name__, type(model).__module__)
'''
BLOCKED = ("mmreid", "configuration_reid", "modeling_reid", "configuration_demo", "modeling_demo",
           "configuration_next", "modeling_next", "image_processing_reid", "processing_reid", "pipeline_reid",
           "baseline")


def write_template(base: Path, shape: str) -> Path:
    """The new family's code outside the project, in the given shape, and a save_pretrained folder of it."""
    files, config_module, model_module, in_script = SHAPES[shape]
    for name, code in files.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(code)
    folder = base / f"baseline-{shape.replace('_', '-')}"
    code = WRITE_TEMPLATE.format(folder=str(base), template=str(folder), config_module=config_module,
                                 model_module=model_module, register=SCRIPT_REGISTRATION if in_script else "")
    proc = subprocess.run([sys.executable, "-c", code], cwd=base, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"].endswith("BaselineModel")
    assert code_files(shape) <= {p.name for p in folder.iterdir()}  # the starting folder holds all of its code
    return folder


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The package shape registered in its module (the shape the first version of this test used)."""
    return write_template(tmp_path_factory.mktemp("outside"), "package_registered_in_module")


@pytest.fixture(scope="module")
def third_party_dataset(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("data"), seed=5, num_train_ids=6, num_test_ids=4,
                              images_per_id=5)


def _train(template: Path, dataset: str, out: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--model", str(template), "--dataset", dataset, "--image-size", "32",
         "16", "--num-identities", "3", "--num-instances", "2", "--disable-tqdm", "true", "--report-to", "none",
         "--output-dir", str(out), *extra],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_saved_folder_holds_the_models_code_and_loads_without_the_project(shape, third_party_dataset,
                                                                                 tmp_path):
    """A package with a relative import (registered in the user's script, or in its module) and a single-file
    model: checkpoint-N/, the final folder and a resumed run's folders hold all its code; AutoModel and the
    checkpoint's pipeline load it in a fresh process where neither the project nor the model's package imports,
    and eval.py evaluates it."""
    template = write_template(tmp_path / "outside", shape)
    out = tmp_path / "trained"
    first = _train(template, third_party_dataset, out, tmp_path, "--max-steps", "2", "--save-strategy", "steps",
                   "--save-steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    for folder in (out / "checkpoint-2", out):
        assert code_files(shape) <= {p.name for p in folder.iterdir()}, (folder, sorted(folder.iterdir()))
    resumed = _train(template, third_party_dataset, out, tmp_path, "--max-steps", "4", "--save-strategy", "steps",
                     "--save-steps", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "final_metrics.json").read_text())["global_step"] == 4
    for folder in (out / "checkpoint-4", out):
        assert code_files(shape) <= {p.name for p in folder.iterdir()}, (folder, sorted(folder.iterdir()))

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fresh = tmp_path / "fresh.safetensors"
    code = RELOAD.format(repo=str(REPO), checkpoint=str(out), out=str(fresh), modules=BLOCKED)
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == "BaselineModel"

    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import AutoModel

    from mmreid.hub.processors import build_processor

    model = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    pixels = torch.rand(2, 3, 3, 32, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rng = np.random.default_rng(0)
    images = [[Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)) for _ in range(3)]
              for _ in range(2)]
    with torch.no_grad():
        expected = model(pixels).embeddings
        from_images = model(**build_processor(model.config)(images)).embeddings
    got = load_file(fresh)
    torch.testing.assert_close(got["embeddings"], expected, rtol=0, atol=0)
    torch.testing.assert_close(got["pipeline"], from_images, rtol=1e-5, atol=1e-6)

    report_dir = tmp_path / "eval"
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), "--model", str(out / "checkpoint-4"), "--dataset",
                           third_party_dataset, "--output", str(report_dir), "--no-progress", "--no-complexity"],
                          cwd=elsewhere, env=dict(env, HF_MODULES_CACHE=str(tmp_path / "modules-eval")),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((report_dir / "eval_results.json").read_text())["model_type"] == "baseline_reid"


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
    from mmreid.data.loading import load_reid_dataset

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
    code = RELOAD.format(repo=str(REPO), checkpoint=str(out), out=str(fresh), modules=BLOCKED)
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


def test_every_hub_push_holds_the_models_code(third_party_dataset, tmp_path):
    """--push-to-hub of a package model registered in the user's script: each pushed revision (its root and its
    checkpoint folder) holds all of the model's code."""
    from fake_hub import FakeHub

    shape = "package_registered_in_script"
    template = write_template(tmp_path / "outside", shape)
    with FakeHub() as fake:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_ENDPOINT=fake.url, HF_HUB_OFFLINE="0", HF_TOKEN="hf_dummy", HF_HOME=str(tmp_path / "hf_home"),
                   HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
                   HF_MODULES_CACHE=str(tmp_path / "modules"))
        proc = subprocess.run(
            [sys.executable, str(REPO / "train.py"), "--model", str(template), "--dataset", third_party_dataset,
             "--image-size", "32", "16", "--num-identities", "3", "--num-instances", "2", "--disable-tqdm", "true",
             "--report-to", "none", "--output-dir", str(tmp_path / "out"), "--max-steps", "2", "--save-strategy",
             "steps", "--save-steps", "2", "--push-to-hub", "--hub-model-id", "tester/baseline",
             "--hub-strategy", "all_checkpoints"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        commits = [c for c in fake.commits if c["repo"] == "tester/baseline"]
        assert len(commits) >= 2, [c["summary"] for c in commits]
        for commit in commits:
            folders: dict[str, set[str]] = {}
            for path in fake.files("model", "tester/baseline", commit["sha"]):
                folder, _, name = path.rpartition("/")
                folders.setdefault(folder, set()).add(name)
            for folder, names in folders.items():
                if "model.safetensors" in names:
                    assert code_files(shape) <= names, (commit["summary"], folder, sorted(names))
