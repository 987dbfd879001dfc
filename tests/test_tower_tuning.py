"""--tower-tuning full | frozen | lora on tiny towers: what trains, what is saved (the merged tower, loadable without
peft), resume in each mode, a learning rate of 0, and the bad-input lines."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import IMPORT_BLOCKER, build_tiny_dataset, random_triples, run_in_fresh_process, tiny_train_args
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train  # noqa: E402
from mmreid.training.arguments import parse_args  # noqa: E402
from mmreid.training.scheduler import DeMoCosineLR, demo_cosine_lr  # noqa: E402
from mmreid.training.tuning import (  # noqa: E402
    ADAPTER_PREFIX, LORA_STATE_FILE, TowerTuning, apply_tower_tuning, lora_layers, resolve_target_modules,
)

TINY = [*tiny_train_args(), "--num-identities", "3", "--num-instances", "2", "--per-device-eval-batch-size", "32",
        "--logging-steps", "1"]
LORA = ["--tower-tuning", "lora", "--lora-rank", "2", "--lora-alpha", "6"]
CAMERA = "vision_tower.embeddings.camera_embedding"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tuning-data"), seed=3, num_train_ids=6, num_test_ids=4,
                              images_per_id=4)


def _trainer(dataset, out, extra):
    run = parse_args([*TINY, "--dataset", dataset, "--output-dir", str(out), "--save-strategy", "no", *extra])
    return train.build_trainer(run)[0]


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _changed(before, model) -> set[str]:
    after = model.state_dict()
    return {name for name, value in before.items() if not torch.equal(value, after[name])}


def _outside_tower(names) -> set[str]:
    return {name for name in names if not name.startswith("vision_tower.")}


def test_frozen_tower_moves_only_the_camera_embedding_and_the_heads(dataset, tmp_path):
    trainer = _trainer(dataset, tmp_path / "out", ["--tower-tuning", "frozen", "--max-steps", "2"])
    model = trainer.model
    before = _snapshot(model)
    trainer.train()
    changed = _changed(before, model)
    assert {name for name in changed if name.startswith("vision_tower.")} == {CAMERA}
    assert _outside_tower(changed), "the heads must train"
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert "vision_tower" not in groups  # no pretrained tower weight is handed to the optimizer
    assert any(p is model.vision_tower.embeddings.camera_embedding for p in groups["head"]["params"])


def test_lora_trains_adapters_and_heads_and_saves_the_merged_tower(dataset, tmp_path, resumable_runs):
    trainer = _trainer(dataset, tmp_path / "out", [*LORA, "--max-steps", "3"])
    model = trainer.model
    before = _snapshot(model)
    trainer.train()
    changed = _changed(before, model)
    tower_changed = {name.removeprefix("vision_tower.") for name in changed if name.startswith("vision_tower.")}
    adapters = {name for name in before if ADAPTER_PREFIX in name}
    assert adapters and {f"vision_tower.{name}" for name in tower_changed} == adapters | {CAMERA}
    assert _outside_tower(changed), "the heads must train"

    saved = tmp_path / "saved"
    trainer.save_model(str(saved))
    weights = load_file(saved / "model.safetensors")
    assert not [key for key in weights if ADAPTER_PREFIX in key or "base_layer" in key]
    assert not (saved / LORA_STATE_FILE).exists()  # resume state belongs to checkpoints only
    layers = lora_layers(model.vision_tower)
    assert sorted({name.rsplit(".", 1)[-1] for name in layers}) == ["k_proj", "q_proj", "v_proj"]
    for name, layer in layers.items():
        base = before[f"vision_tower.{name}.base_layer.weight"]
        a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
        merged = weights[f"vision_tower.{name}.weight"]
        torch.testing.assert_close(merged, base + (b @ a) * (6 / 2), rtol=0, atol=0)
        assert not torch.equal(merged, base)
        assert torch.equal(weights[f"vision_tower.{name}.bias"], before[f"vision_tower.{name}.base_layer.bias"])

    # In a process where peft cannot be imported: the saved folder gives the unmerged model's embeddings, and so do
    # a LoRA run's checkpoints and final model (train.py's folders).
    pixels = random_triples(2, (32, 16), seed=5)
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=pixels, camera_ids=torch.tensor([0, 1])).embeddings
    from safetensors.torch import save_file

    save_file({"pixel_values": pixels.contiguous()}, tmp_path / "pixels.safetensors")
    run = resumable_runs["lora"][0]
    folders = [str(saved), str(run / "checkpoint-2"), str(run / "checkpoint-4"), str(run)]
    got = run_in_fresh_process(NO_PEFT_PROCESS, {"folders": folders, "pixels": str(tmp_path / "pixels.safetensors")},
                               tmp_path)
    torch.testing.assert_close(got["0"], expected, rtol=0, atol=1e-5)
    assert not torch.equal(got["1"], got["2"])  # the checkpoints are two steps apart
    torch.testing.assert_close(got["2"], got["3"], rtol=0, atol=0)  # the final model is the last checkpoint


NO_PEFT_PROCESS = IMPORT_BLOCKER + '''sys.modules["peft"] = None  # as if peft were not installed: import fails, importlib.util.find_spec finds nothing
try:
    import peft  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("peft imported")
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

spec = json.loads(open({spec!r}).read())
pixels = load_file(spec["pixels"])["pixel_values"]
out = {{}}
for i, folder in enumerate(spec["folders"]):
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        out[str(i)] = model(pixel_values=pixels, camera_ids=torch.tensor([0, 1])).embeddings.contiguous()
assert "peft" not in {{name.split(".")[0] for name, m in sys.modules.items() if m is not None}}
save_file(out, spec["output"])
'''


@pytest.fixture(scope="module")
def resumable_runs(dataset, tmp_path_factory):
    """Per mode, an uninterrupted 4-step run with checkpoints at steps 2 and 4."""
    runs = {}
    for mode, flags in (("frozen", ["--tower-tuning", "frozen"]), ("lora", LORA)):
        out = tmp_path_factory.mktemp(f"uninterrupted-{mode}") / "out"
        result = train.main([*TINY, *flags, "--dataset", dataset, "--max-steps", "4", "--save-strategy", "steps",
                             "--save-steps", "2", "--output-dir", str(out)])
        runs[mode] = out, result, flags
    return runs


@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_resume_mid_run_ends_with_the_uninterrupted_weights(mode, dataset, tmp_path, resumable_runs):
    full_dir, full, flags = resumable_runs[mode]
    out = tmp_path / "resumed"
    resumed = train.main([*TINY, *flags, "--dataset", dataset, "--max-steps", "4", "--save-strategy", "no",
                          "--output-dir", str(out), "--resume-from-checkpoint", str(full_dir / "checkpoint-2")])
    assert resumed["global_step"] == 4 and resumed["mAP"] == full["mAP"]
    a, b = load_file(full_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert (full_dir / "checkpoint-2" / LORA_STATE_FILE).is_file() == (mode == "lora")


def test_lora_run_records_its_settings_and_counts(resumable_runs):
    out, result, _ = resumable_runs["lora"]
    record = {"mode": "lora", "rank": 2, "alpha": 6.0, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj"]}
    assert json.loads((out / "config.json").read_text())["tower_tuning"] == record
    assert json.loads((out / "checkpoint-2" / "config.json").read_text())["tower_tuning"] == record
    assert json.loads((out / "run_info.json").read_text())["tower_tuning"] == record
    metrics = json.loads((out / "final_metrics.json").read_text())
    counts = metrics["parameters"]
    # one 32-wide layer: q, k, v adapters of rank 2 (2 x 32 + 32 x 2 each) and the camera embedding train in the tower
    cameras = load_file(out / "model.safetensors")[CAMERA].shape[0]
    assert counts["tower_trainable"] == 3 * (2 * 32 + 32 * 2) + cameras * 32
    assert counts["trainable"] == sum(counts["groups"].values()) < counts["total"]
    assert "vision_tower" not in counts["groups"] and metrics["tower_tuning"] == record
    card = (out / "README.md").read_text()
    assert "Tower tuning: LoRA (rank 2, alpha 6, dropout 0) on q_proj / k_proj / v_proj" in card
    assert f"| parameters (trainable / total) | {counts['trainable']:,} / {counts['total']:,} |" in card


def test_frozen_run_says_so_in_its_card_and_config(resumable_runs):
    out, result, _ = resumable_runs["frozen"]
    assert json.loads((out / "config.json").read_text())["tower_tuning"] == {"mode": "frozen"}
    assert "Tower tuning: frozen" in (out / "README.md").read_text()
    counts = result["parameters"]
    assert counts["tower_trainable"] == load_file(out / "model.safetensors")[CAMERA].numel()


def test_resuming_in_another_mode_is_refused_in_one_line(resumable_runs, dataset, tmp_path, capsys):
    full_dir, _, _ = resumable_runs["lora"]
    code = train.cli([*TINY, "--tower-tuning", "frozen", "--dataset", dataset, "--max-steps", "4",
                      "--output-dir", str(tmp_path / "out"), "--resume-from-checkpoint",
                      str(full_dir / "checkpoint-2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "tower tuning mode=lora" in err[0] and "mode=frozen" in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_group_at_learning_rate_zero_does_not_move(dataset, tmp_path):
    """--vision-tower-lr 0 in full tuning: the shared warm-up start (3.5e-5 in the recipes) used to train the tower."""
    trainer = _trainer(dataset, tmp_path / "out", ["--vision-tower-lr", "0", "--max-steps", "2"])
    model = trainer.model
    before = _snapshot(model)
    trainer.train()
    changed = _changed(before, model)
    assert {name for name in changed if name.startswith("vision_tower.")} == {CAMERA}
    assert _outside_tower(changed)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["vision_tower"]["lr"] == 0 and groups["head"]["lr"] > 0
    # ... and it is the training --tower-tuning frozen gives (which skips the tower's gradients), weight for weight
    frozen = _trainer(dataset, tmp_path / "frozen", ["--tower-tuning", "frozen", "--max-steps", "2"])
    frozen.train()
    assert not _changed(_snapshot(model), frozen.model)


def test_the_schedule_keeps_a_zero_rate_at_zero_and_the_recipe_numbers_elsewhere():
    for t in range(0, 25):
        assert demo_cosine_lr(t, 0.0, 20, 10, 3.5e-5, 3.5e-7) == 0.0
    # the recipe's tower group still starts its warm-up at the shared 3.5e-5 and ends at the shared floor
    assert demo_cosine_lr(0, 5e-6, 20, 10, 3.5e-5, 3.5e-7, noise=False) == 3.5e-5
    assert demo_cosine_lr(20, 5e-6, 20, 10, 3.5e-5, 3.5e-7) == 3.5e-7
    tower, head = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([{"params": [tower], "lr": 0.0}, {"params": [head], "lr": 3.5e-4}])
    scheduler = DeMoCosineLR(optimizer, num_epochs=4, steps_per_epoch=1, warmup_epochs=2)
    for _ in range(5):
        assert optimizer.param_groups[0]["lr"] == 0.0 and optimizer.param_groups[1]["lr"] > 0
        optimizer.step()
        scheduler.step()


def test_default_targets_are_the_attention_projections_of_each_tower_kind():
    from mmreid.hub.backbones import tiny_demo_config, tiny_next_config
    from modeling_demo import DeMoModel
    from modeling_next import NextModel

    for kind in ("clip", "vit"):  # transformers 5 names them q_proj / k_proj / v_proj in every family
        model = DeMoModel(tiny_demo_config(num_labels=4, num_cameras=2, image_size=(32, 16), backbone_type=kind))
        assert resolve_target_modules(model.vision_tower) == ["q_proj", "k_proj", "v_proj"]
    assert resolve_target_modules(model.vision_tower, ["attention.o_proj"]) == ["attention.o_proj"]

    class OlderNames(torch.nn.Module):  # transformers 4's ViT / DINOv2 (and many remote-code towers): query/key/value
        def __init__(self):
            super().__init__()
            self.attention = torch.nn.ModuleDict({name: torch.nn.Linear(4, 4) for name in ("query", "key", "value")})
            self.output = torch.nn.Linear(4, 4)

    assert resolve_target_modules(OlderNames()) == ["query", "key", "value"]
    with pytest.raises(ValueError, match="no attention projection named"):
        resolve_target_modules(torch.nn.Sequential(torch.nn.Linear(4, 4)))

    # NEXT: only the image tower is adapted; the frozen text tower stays frozen
    next_model = NextModel(tiny_next_config(num_labels=4, num_cameras=2, image_size=(32, 16)))
    summary = apply_tower_tuning(next_model, TowerTuning("lora", lora_rank=2))
    assert not any(p.requires_grad for p in next_model.text_tower.parameters())
    assert not lora_layers(next_model.text_tower) and len(lora_layers(next_model.vision_tower)) == 3 * len(
        next_model.vision_tower.layers)
    trainable = {n for n, p in next_model.vision_tower.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ADAPTER_PREFIX in n} | {"embeddings.camera_embedding"}
    assert set(summary["tower_trainable"]) == trainable
    assert summary["parameters"]["tower_trainable"] == sum(
        p.numel() for p in next_model.vision_tower.parameters() if p.requires_grad)


def test_adapter_names_follow_peft():
    from peft.tuners.lora import LoraModel

    assert LoraModel.prefix == ADAPTER_PREFIX


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--lora-rank", "4"], "--lora-rank does nothing under --tower-tuning full"),
        (["--tower-tuning", "frozen", "--lora-target-modules", "q_proj"], "--lora-target-modules does nothing"),
        (["--tower-tuning", "lora", "--lora-target-modules", "q_proj", "attn_nowhere"],
         "--lora-target-modules attn_nowhere: no layer of the image tower"),
        (["--tower-tuning", "lora", "--lora-rank", "0"], "--lora-rank must be a whole number >= 1"),
        (["--tower-tuning", "lora", "--lora-dropout", "1"], "--lora-dropout must be in [0, 1)"),
        (["--tower-tuning", "frozen", "--vision-tower-lr", "1e-5"], "--vision-tower-lr does nothing under"),
        (["--tower-tuning", "sideways"], "--tower-tuning"),
    ],
)
def test_bad_tuning_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code = train.cli([*TINY, "--output-dir", str(tmp_path / "out"), "--synthetic-dir", str(tmp_path / "syn"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("train.py: error: ") and needle in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_lora_without_peft_says_which_extra_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft fails, as where it is not installed
    code = train.cli([*TINY, "--tower-tuning", "lora", "--output-dir", str(tmp_path / "out"),
                      "--synthetic-dir", str(tmp_path / "syn")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--tower-tuning lora needs the peft package" in err[0] and 'pip install -e ".[tuning]"' in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_lora_checkpoint_push_keeps_the_adapters_inside_the_checkpoint_folder(resumable_runs, tmp_path):
    """--push-to-hub --hub-strategy checkpoint: the repo root gets the merged model (what AutoModel loads), the
    unmerged adapters go only under last-checkpoint/ with the rest of the resume state."""
    from mmreid.hub.push import LAST_CHECKPOINT, HubPushCallback

    checkpoint = resumable_runs["lora"][0] / "checkpoint-2"
    snapshot = HubPushCallback("user/demo", lambda folder, state: None)._snapshot(
        checkpoint, tmp_path / "commit", LAST_CHECKPOINT, None)
    assert (snapshot / "model.safetensors").is_file() and not (snapshot / LORA_STATE_FILE).exists()
    assert (snapshot / LAST_CHECKPOINT / LORA_STATE_FILE).is_file()
