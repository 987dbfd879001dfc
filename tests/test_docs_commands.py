"""The shell blocks of README.md and docs/*.md run as written (issue 29.11: a doc must not drift from the code).

Every fenced ``bash`` block is cut into commands (continuation lines joined, here-documents kept whole). A command
that needs what a test machine lacks (a public release, a GPU, the Hub, a server, minutes of measurement) matches one
rule of ``NOT_RUN`` and is listed with its reason; so is a later command that reads what such a command would have
written. Every other command runs, in document order, in a fresh folder per block, with these settings defined once
here:

- the folder holds links to the repository's files, and ``outputs/synthetic-rgbnt201`` as ``python train.py``
  builds it (built once for the module); a block that uses ``outputs/demo-synthetic`` without training it finds the
  model README command 1 leaves (trained once, with the tiny settings);
- ``TINY_TRAIN`` is appended to every ``train.py`` (argparse keeps the last value of a repeated option): a one-layer
  32-wide tower at 32x16, a few steps. Launchers get a free port (other tests run beside this one);
- ``pip install`` is not run (the tests' environment has every extra); the extras and constraints it names must
  exist; ``[--option ...]`` marks an optional part and is left out.

A command passes when it exits 0 and every output it names exists (``--output-dir``, ``--output``, ``--out``,
``train.py``'s default folder, ``export_onnx.py --quantize int8``'s ``.int8.onnx``). A command that names outputs
not yet written, and already ran with the same paths it names present (``python train.py`` opens four blocks, the
2-process runs and the export appear twice), runs once; the other blocks get copies of its outputs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO_ROOT, free_port, tiny_train_args

DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")

# What a command needs that a test machine lacks: (pattern searched in the command, reason). A new command either
# runs or matches one of these; a rule that no longer matches any command fails `test_every_rule_is_used`.
NOT_RUN = [
    (r"#SBATCH", "a SLURM cluster (docs/training.md; the SIGTERM checkpoint it relies on: tests/test_faults.py)"),
    (r"--root /data\b|--dataset /data/|/data/next_captions", "a public release under /data (tests/test_datasets.py "
     "converts synthetic copies of each layout)"),
    (r"(?<![\w/])data/(rgbnt201|rgbnt100|msvr310|wmveid863)\b", "an Arrow dataset built from a public release"),
    (r"single_gpu\.yaml|multi_gpu\.yaml|multi_node\.yaml|--device cuda|gpu_check\.py", "CUDA GPUs or several "
     "machines (tests/test_multi_node.py, tests/test_gpu_check.py run their CPU forms)"),
    (r"--push-to-hub|--dataset user/", "the Hugging Face Hub (tests/test_hub_round_trip.py runs it against "
     "tests/fake_hub.py)"),
    (r"--backend (openai|transformers)|vllm serve", "a vision-language model (tests/test_captions_*.py use fakes)"),
    (r"tensorboard --logdir|space/app\.py", "a server that runs until stopped (tests/test_tensorboard.py, "
     "tests/test_space_page.py)"),
    (r"\b(DIR|PATH|CKPT)\b|\.\.\.", "placeholders for the reader's own paths"),
    (r"benchmarks/(run|bench_decode|bench_metrics)\.py", "a measurement taking minutes (docs/benchmarks.md)"),
    (r"(cpu_2proc\.yaml|--nproc_per_node 2) train\.py", "two training processes, a minute of this test's 2-minute "
     "budget: tests/test_train.py runs both launchers (test_two_process_accelerate_launch, "
     "test_one_and_two_processes_compute_the_same_run)"),
    (r"--torch-compile", "inductor compiles for minutes on 2 cores (tests/test_train_compile.py)"),
    (r"DeMo_RGBNT201\.pth", "the authors' checkpoint (tests/test_convert_original.py converts one of its layout)"),
    (r"python -m pytest", "the test suite itself"),
    (r"milvus-server|--milvus-uri|http://127\.0\.0\.1:19530", "a Milvus server (tests/test_gallery_stores.py runs "
     "the store against one when MILVUS_URI or MILVUS_SERVER_VENV is set)"),
]

# README command 1's product, which later blocks take as given, and the synthetic set every train.py starts from.
DEFAULT_MODEL, DEFAULT_SET = "outputs/demo-synthetic", "outputs/synthetic-rgbnt201"
# train.py's output folder when --output-dir is not given (README: "leaves ... in outputs/demo-synthetic").
TRAIN_DEFAULT_OUTPUT = {"demo": DEFAULT_MODEL, "next": "outputs/next-synthetic"}
TINY_TRAIN = {model: [*tiny_train_args(model)[2:], "--max-steps", "3", "--logging-steps", "1"]
              for model in TRAIN_DEFAULT_OUTPUT}
NOT_LINKED = {"tests", "outputs", "data", "eval_out"}  # what the commands write, and what they must not read

SHIMS = """
_docs_tiny() {  # the tiny settings of the first script named in "$@"
  local script="" model=demo prev=""
  for a in "$@"; do
    case "$a" in *.py) [ -z "$script" ] && script="${a##*/}";; esac
    [ "$prev" = --model ] && model="$a"
    prev="$a"
  done
  if [ "$script" = train.py ]; then if [ "$model" = next ]; then echo "$DOCS_TINY_NEXT"; else echo "$DOCS_TINY_DEMO";
  fi; fi
}
python() { "$DOCS_PYTHON" "$@" $(_docs_tiny "$@"); }
torchrun() { "$DOCS_PYTHON" -m torch.distributed.run --master_port "$DOCS_PORT" "$@" $(_docs_tiny "$@"); }
accelerate() {
  if [ "$1" = launch ]; then shift
    "$DOCS_PYTHON" -m accelerate.commands.launch --main_process_port "$DOCS_PORT" "$@" $(_docs_tiny "$@")
  else "$DOCS_PYTHON" -m accelerate.commands.accelerate_cli "$@"; fi
}
pip() { echo "docs test: pip $* (not run: the environment has every extra)"; }
set -e
"""


@dataclass
class Command:
    text: str
    line: int  # where it starts in the document, for messages


@dataclass
class Block:
    document: str
    line: int
    commands: list[Command] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"


def shell_blocks(document: str) -> list[Block]:
    """The fenced shell blocks of one document, cut into commands."""
    text = (REPO_ROOT / document).read_text()
    blocks = []
    for match in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S):
        if match.group(1) not in SHELL_LANGUAGES:
            continue
        first = text[: match.start()].count("\n") + 2
        block = Block(document, first - 1)
        lines = match.group(2).splitlines()
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            i += 1
            if not line.strip() or (line.lstrip().startswith("#") and not line.startswith("#SBATCH")):
                continue
            parts = [line]
            while parts[-1].endswith("\\") and i < len(lines):
                parts.append(lines[i])
                i += 1
            heredoc = re.search(r"<<-?\s*'?(\w+)'?", parts[-1])
            if heredoc:
                while i < len(lines):
                    parts.append(lines[i])
                    i += 1
                    if lines[i - 1].strip() == heredoc.group(1):
                        break
            block.commands.append(Command("\n".join(parts), first + start))
        if any(c.text.startswith("#SBATCH") for c in block.commands):  # one script, not separate commands
            block.commands = [Command(match.group(2), first)]
        blocks.append(block)
    return blocks


ALL_BLOCKS = [block for document in DOCUMENTS for block in shell_blocks(document)]


def without_optional_parts(command: str) -> str:
    """``[--camera 0 --drop-same-camera]`` is the docs' mark of an optional part: run the command without it."""
    return re.sub(r"\s*\[--[^\]]*\]", "", command)


def not_run_reason(command: str) -> str | None:
    return next((reason for pattern, reason in NOT_RUN if re.search(pattern, command)), None)


def _segments(command: str) -> list[list[str]]:
    """The simple commands of a ``&&`` / ``;`` chain, as argument lists (trailing comments dropped)."""
    if "<<" in command:
        return []
    try:
        words = shlex.split(command, comments=True)
    except ValueError:  # not a simple command line (a script): nothing to read from it
        return []
    segments, current = [], []
    for word in words:
        if word in ("&&", "||", ";", "|", "&"):
            segments.append(current)
            current = []
        else:
            current.append(word)
    return [*segments, current]


def _value(args: list[str], option: str) -> str | None:
    return args[args.index(option) + 1] if option in args and args.index(option) + 1 < len(args) else None


def claimed_outputs(command: str) -> list[str]:
    """The files and folders a command says it writes."""
    outputs = []
    for args in _segments(command):
        script = next((Path(a).name for a in args if a.endswith(".py")), None)
        if script == "train.py":
            model = "next" if _value(args, "--model") == "next" else "demo"
            outputs.append(_value(args, "--output-dir") or TRAIN_DEFAULT_OUTPUT[model])
            continue
        for option in ("--output-dir", "--output", "--out"):
            if _value(args, option):
                outputs.append(_value(args, option))
        if script == "export_onnx.py" and _value(args, "--quantize") == "int8":
            outputs.append(str(Path(_value(args, "--output")).with_suffix(".int8.onnx")))
    return outputs


def plan(block: Block) -> list[tuple[Command, str, str | None]]:
    """(command, what runs, the reason it is not run or None) for each command of a block, in order."""
    steps, unavailable = [], []
    for command in block.commands:
        text = without_optional_parts(command.text)
        reason = not_run_reason(text)
        if reason is None:
            missing = [path for path in unavailable if path in text]
            reason = f"reads {missing[0]}, written by a command not run here" if missing else None
        if reason is not None and "#SBATCH" not in text:  # README command 1's model stays given
            unavailable += [path for path in claimed_outputs(text) if path != DEFAULT_MODEL]
        steps.append((command, text, reason))
    return steps


def _pip_is_satisfiable(command: str) -> None:
    """A `pip install` this test does not run must still name extras and constraints that exist."""
    extras = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for args in _segments(command):
        if args[:2] != ["pip", "install"]:
            continue
        for word in args[2:]:
            named = re.fullmatch(r"(?:-e\s*)?\.\[([\w,]+)\]", word)
            if named:
                assert set(named.group(1).split(",")) <= extras, (command, extras)
        if "-c" in args:
            assert (REPO_ROOT / _value(args, "-c")).is_file(), command


def _fresh_folder(path: Path, synthetic_set: Path) -> Path:
    path.mkdir()
    for entry in REPO_ROOT.iterdir():
        if entry.name.startswith(".") or entry.name in NOT_LINKED or entry.name.endswith(".egg-info"):
            continue
        (path / entry.name).symlink_to(entry)
    shutil.copytree(synthetic_set, path / DEFAULT_SET)
    return path


def _environment() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg", DOCS_PYTHON=sys.executable,
               DOCS_TINY_DEMO=shlex.join(TINY_TRAIN["demo"]), DOCS_TINY_NEXT=shlex.join(TINY_TRAIN["next"]))
    env.pop("PYTHONSTARTUP", None)
    return env


def normalized(command: str) -> str:
    """The command as it runs here: comments and the `pip install` steps (not run) left out."""
    if "<<" in command:
        return command.strip()
    return " && ".join(shlex.join(args) for args in _segments(command) if args and args[0] != "pip")


# A command that already ran in the same state has nothing new to show: (normalized command, the paths it names
# that existed when it ran) -> the folder it ran in, whose outputs are copied instead. Only for commands whose
# outputs do not exist yet (train.py refuses an existing --output-dir: that must run).
_RAN: dict[tuple[str, tuple[str, ...]], Path] = {}


def state_key(text: str, folder: Path) -> tuple[str, tuple[str, ...]]:
    named = set(re.findall(r"[\w.-]+(?:/[\w.-]+)*", text))
    return normalized(text), tuple(sorted(word for word in named if "/" in word and (folder / word).exists()))


def run_command(text: str, folder: Path) -> subprocess.CompletedProcess:
    env = dict(_environment(), DOCS_PORT=str(free_port()))
    return subprocess.run(["bash", "-c", SHIMS + text], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The synthetic default set, built once, and README command 1's model trained on it with the tiny settings."""
    from mmreid.data.synthetic import prepare_default_set

    base = tmp_path_factory.mktemp("docs-commands")
    synthetic_set = prepare_default_set(base / "synthetic-rgbnt201")
    trained = _fresh_folder(base / "trained", synthetic_set)
    proc = run_command("python train.py", trained)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _RAN[("python train.py", ())] = trained  # state_key: the synthetic set is never named, so always present
    return synthetic_set, trained / DEFAULT_MODEL


def test_every_rule_is_used():
    """A rule that matches no command is stale: the command it was for changed or left the docs."""
    texts = [without_optional_parts(c.text) for block in ALL_BLOCKS for c in block.commands]
    for pattern, reason in NOT_RUN:
        assert any(re.search(pattern, t) for t in texts), f"NOT_RUN rule {pattern!r} ({reason}) matches no command"


def test_the_command_cutter_keeps_continuations_and_here_documents():
    readme = [b for b in ALL_BLOCKS if b.document == "README.md"]
    heredocs = [c.text for b in readme for c in b.commands if "<<'PY'" in c.text]
    assert heredocs and all(t.rstrip().endswith("PY") and "load_from_disk" in t for t in heredocs)
    assert all(not c.text.rstrip().endswith("\\") for b in ALL_BLOCKS for c in b.commands)
    assert claimed_outputs("python train.py --model next") == ["outputs/next-synthetic"]
    assert claimed_outputs("python data_scripts/export_onnx.py --model m --output d.onnx --quantize int8") == [
        "d.onnx", "d.int8.onnx"]
    steps = plan(Block("x.md", 1, [Command("python train.py --push-to-hub --output-dir outputs/hub", 2),
                                   Command("python eval.py --model outputs/hub --dataset outputs/s", 3)]))
    assert [reason is None for _, _, reason in steps] == [False, False] and "outputs/hub" in steps[1][2]


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.name)
def test_block_runs_as_written(block, prepared, tmp_path):
    synthetic_set, trained_default = prepared
    steps = plan(block)
    if all(reason for _, _, reason in steps):
        pytest.skip("; ".join(sorted({reason for _, _, reason in steps})))
    folder = _fresh_folder(tmp_path / "reader", synthetic_set)
    for command, text, reason in steps:
        if reason:
            continue
        _pip_is_satisfiable(text)
        outputs = claimed_outputs(text)
        if DEFAULT_MODEL in text and not (folder / DEFAULT_MODEL).exists() and DEFAULT_MODEL not in outputs:
            shutil.copytree(trained_default, folder / DEFAULT_MODEL)  # README command 1 ran before this block
        where = f"{block.document}:{command.line}: {text}"
        key = state_key(text, folder)
        earlier = _RAN.get(key)
        if (earlier is not None and outputs and not any((folder / o).exists() for o in outputs)
                and all((earlier / o).exists() for o in outputs)):
            for output in outputs:
                (folder / output).parent.mkdir(parents=True, exist_ok=True)
                copy = shutil.copytree if (earlier / output).is_dir() else shutil.copy2
                copy(earlier / output, folder / output)
        else:
            proc = run_command(text, folder)
            assert proc.returncode == 0, (f"{where}\nexit {proc.returncode} (fix the doc or the code; a command that "
                                          f"cannot run here gets a NOT_RUN rule)\n{proc.stderr[-3000:]}")
            _RAN[key] = folder
        for output in outputs:
            assert (folder / output).exists(), f"{where}\nsays it writes {output}, which does not exist"

def test_ci_runs_the_readme_test_command_verbatim():
    """.ci/run is what CI executes: it must be README command 2, character for character."""
    readme = next(b for b in ALL_BLOCKS if b.document == "README.md")
    command_2 = next(c.text for c in readme.commands if "pytest" in c.text)
    assert (REPO_ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1] == command_2
