"""IDEA equals its authors' model: tiny random models built and run by the authors' code
(tests/fixtures/make_idea_reference.py, run by hand with their repository) are converted by
data_scripts/convert_original_checkpoint.py and loaded in a fresh process through AutoModel (remote code only);
every test-time feature matches the authors' outputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import IMPORT_BLOCKER, load_data_script, run_in_fresh_process
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data_scripts" / "convert_original_checkpoint.py"
FIXTURES = REPO / "tests" / "fixtures" / "idea_reference"
CASES = json.loads((FIXTURES / "cases.json").read_text())

FRESH_PROCESS = IMPORT_BLOCKER + '''
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

spec = json.loads(open({spec!r}).read())
io = load_file(spec["io"])
model = AutoModel.from_pretrained(spec["checkpoint"], trust_remote_code=True).eval()
pixels = (io["images"].float() / 255 - 0.5) / 0.5
with torch.no_grad():
    out = model(pixels, camera_ids=io["camera_ids"], input_ids=io["input_ids"])
rows = {{f"feature.{{k}}": v.contiguous() for k, v in out.feature_sets.items()}}
save_file({{"embeddings": out.embeddings.contiguous(), **rows}}, spec["output"])
'''


def convert(case: str, output: Path, *extra) -> subprocess.CompletedProcess:
    height, width = CASES[case]["image_size"]
    # --force: the tiny fixtures are not at their dataset's input size (the identity count names the dataset).
    return subprocess.run([sys.executable, str(SCRIPT), "--checkpoint", str(FIXTURES / f"{case}.weights.safetensors"),
                           "--image-size", str(height), str(width), "--force", "--output", str(output), *extra],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_checkpoint_gives_the_authors_features_in_a_fresh_process(case, tmp_path):
    result = convert(case, tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    expected_setting = CASES[case]
    assert config["model_type"] == "idea_reid"
    assert config["cda_offset_factor"] == expected_setting["OFF_FAC"]  # from the identity count, no tensor holds it
    assert config["num_text_prompts"] == expected_setting["TEXT_PROMPT"]
    assert config["concatenated_heads"] == bool(expected_setting["DIRECT"])
    got = run_in_fresh_process(FRESH_PROCESS, {"checkpoint": str(tmp_path / "hf"),
                                               "io": str(FIXTURES / f"{case}.io.safetensors")}, tmp_path)
    reference = load_file(FIXTURES / f"{case}.io.safetensors")
    torch.testing.assert_close(got["embeddings"], reference["output.LOCAL_t"], rtol=0, atol=1e-4)
    assert sorted(k.split(".", 1)[1] for k in got if k.startswith("feature.")) == sorted(expected_setting["features"])
    for name in expected_setting["features"]:
        torch.testing.assert_close(got[f"feature.{name}"], reference[f"output.{name}"], rtol=0, atol=1e-4, msg=name)


def test_the_offset_factor_flag_overrides_the_dataset_and_changes_the_aggregates(tmp_path):
    """OFF_FAC is read from the identity count unless --offset-factor is given; it matters (the reference matches
    only with the authors' value)."""
    from mmreid.hub.conversion import convert_checkpoint

    height, width = CASES["rgbnt201"]["image_size"]
    model = convert_checkpoint(FIXTURES / "rgbnt201.weights.safetensors", (height, width), tmp_path / "hf", force=True,
                               offset_factor=0.5).eval()
    assert model.config.cda_offset_factor == 0.5
    reference = load_file(FIXTURES / "rgbnt201.io.safetensors")
    with torch.no_grad():
        out = model((reference["images"].float() / 255 - 0.5) / 0.5, reference["camera_ids"], reference["input_ids"])
    torch.testing.assert_close(out.feature_sets["V_RGB"], reference["output.V_RGB"], rtol=0, atol=1e-4)
    assert (out.embeddings - reference["output.LOCAL_t"]).abs().max() > 1e-3


def test_an_unknown_dataset_needs_the_offset_factor(tmp_path, capsys):
    """Identity counts of none of the authors' datasets: the converter asks for --offset-factor, writes nothing."""
    state = load_file(FIXTURES / "msvr310.weights.safetensors")
    for key in [k for k in state if "classifier" in k]:
        state[key] = state[key][:7].clone()
    torch.save(state, tmp_path / "model.pth")
    code = load_data_script("convert_original_checkpoint").main(
        ["--checkpoint", str(tmp_path / "model.pth"), "--image-size", "96", "128", "--output", str(tmp_path / "hf")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "7 identities" in lines[0] and "--offset-factor" in lines[0]
    assert not (tmp_path / "hf").exists()
