"""Every entry point, started by its path from another working directory: it imports the installed package (no
``sys.path`` edits) and reports bad input through ``mmreid.errors.run_cli``: one line ``<script>: error: ...``,
exit status 2, nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Where an entry file still puts a folder on sys.path, and why the installed package does not serve there.
SYS_PATH_EDITS = {
    "benchmarks/heads_suite.py": "imports tests/module_per_expert_heads.py (the unbatched reference heads), not "
                                 "part of the package",
}

CASES = {  # script -> (arguments, the start of its one error line); {tmp} is the working directory
    "train.py": (["--output-dir", "{tmp}/a-file"], "--output-dir {tmp}/a-file is a file"),
    "eval.py": (["--model", "{tmp}/none", "--dataset", "{tmp}/none"], "--dataset: no such folder: dataset {tmp}/none does not exist"),
    "data_scripts/build_dataset.py": (["--name", "RGBNT201", "--root", "{tmp}", "--output", "{tmp}/a-file"],
                                      "--output {tmp}/a-file already exists (pass --overwrite to replace it)"),
    "data_scripts/make_synthetic.py": (["--layout", "RGBNT201", "--out", "{tmp}/a-file"],
                                       "--out {tmp}/a-file is a file; expected a folder"),
    "data_scripts/generate_captions.py": (["--stats-only", "{tmp}/none"], "caption folder {tmp}/none: does not exist"),
    "data_scripts/convert_original_checkpoint.py": (
        ["--checkpoint", "{tmp}/none.pth", "--image-size", "256", "128", "--output", "{tmp}/out"],
        "{tmp}/none.pth: no such checkpoint file"),
    "data_scripts/export_onnx.py": (["--model", "{tmp}/none", "--output", "{tmp}/m.onx"],
                                    "--output {tmp}/m.onx: expected a .onnx file name"),
    "data_scripts/next_caption_effect.py": (["--model", "{tmp}/none", "--dataset", "{tmp}/none"],
                                            "--model {tmp}/none: no config.json there"),
    "data_scripts/embed.py": (["--model", "{tmp}/none", "--dataset", "{tmp}/none", "--output", "{tmp}/out"],
                              "--dataset {tmp}/none: no such folder: dataset {tmp}/none does not exist"),
    "data_scripts/search.py": (["--index", "{tmp}/none", "--rgb", "{tmp}/a-file"],
                               "--index {tmp}/none: no retrieval.json there"),
    "data_scripts/gallery.py": (["info", "--index", "{tmp}/none"], "--index {tmp}/none: no retrieval.json there"),
}


def entry_files() -> list[Path]:
    return sorted([REPO / "train.py", REPO / "eval.py", REPO / "space" / "app.py",
                   *(REPO / "data_scripts").glob("*.py"), *(REPO / "benchmarks").glob("*.py")])


def test_entry_files_do_not_edit_sys_path_where_the_installed_package_serves():
    edits = {str(path.relative_to(REPO)) for path in entry_files() if "sys.path" in path.read_text()}
    assert edits == set(SYS_PATH_EDITS)


def test_every_data_script_has_a_bad_input_case_here():
    assert {f"data_scripts/{p.name}" for p in (REPO / "data_scripts").glob("*.py")} <= set(CASES)


@pytest.mark.parametrize("script", sorted(CASES))
def test_bad_input_is_one_line_from_another_directory(script, tmp_path):
    (tmp_path / "a-file").write_text("a file, not a folder")
    args, expected = CASES[script]
    before = sorted(tmp_path.rglob("*"))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(REPO / script), *(a.format(tmp=tmp_path) for a in args)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    lines = proc.stderr.strip().splitlines()
    name = Path(script).name
    assert proc.returncode == 2 and lines, proc.stderr[-2000:]
    assert lines[-1].startswith(f"{name}: error: {expected.format(tmp=tmp_path)}"), lines[-3:]
    assert [line for line in lines if "error" in line.lower()] == lines[-1:]  # one error line, no traceback
    assert sorted(tmp_path.rglob("*")) == before
