"""Shared fixtures: tiny randomly initialised DeMo models (no Hub access exists here)."""

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Under pytest-xdist (the README's test command: `-n auto`, whole files per worker as pyproject.toml's addopts say)
# each worker is a process of its own.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    import atexit
    import shutil

    # A remote-code load copies the checkpoint's model files into HF_MODULES_CACHE under the folder's name: two
    # workers loading folders of one name would rewrite each other's files while importing them.
    _modules_cache = tempfile.mkdtemp(prefix=f"hf-modules-{XDIST_WORKER}-")
    os.environ["HF_MODULES_CACHE"] = _modules_cache
    atexit.register(shutil.rmtree, _modules_cache, ignore_errors=True)
    # The workers fill the cores already: a second torch thread in a worker only spins against the other workers.
    # (Processes the tests start keep torch's default unless a test sets OMP_NUM_THREADS.)
    torch.set_num_threads(1)

# The longest files (measured with --durations), handed to the workers first so that no worker starts one of them
# while the others run out of work; every other file follows in collection order. Only the order changes.
LONGEST_FILES_FIRST = (
    "test_train.py", "test_third_party_model.py", "test_export_onnx.py", "test_docs_commands.py", "test_compile.py",
    "test_faults.py", "test_missing_modalities.py", "test_hub_round_trip.py", "test_entry_points.py",
    "test_idea_export.py", "test_idea_reference.py", "test_gallery_stores.py", "test_gpu_check.py",
    "test_retrieval.py", "test_convert_original.py", "test_processors.py", "test_export_quantized.py",
    "test_trainer_options.py", "test_space_page.py", "test_multi_node.py", "test_reid_map_module.py", "test_eval.py",
)


def pytest_collection_modifyitems(config, items):
    if XDIST_WORKER:  # each worker collects; all must give the scheduler the same order
        rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


# The start of a fresh-process script that must run without the named top-level packages (`.format(modules=...)`):
# a checkpoint's remote code may not fall back on the project (or peft, ...) installed beside it.
IMPORT_BLOCKER = '''
import json, sys, importlib.abc


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {modules!r}:
            raise ImportError(f"{{name}} is blocked in this process")


sys.meta_path.insert(0, Block())
'''


def load_data_script(name: str):
    """``data_scripts/<name>.py`` as a module (the scripts are not a package), without running it as __main__."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from 2 threads, and spinning threads slow down 10x when the 2 cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config():
    from mmreid.hub.backbones import tiny_demo_config

    return tiny_demo_config(num_labels=6, num_cameras=3, image_size=(32, 16))


@pytest.fixture
def tiny_model(tiny_config):
    from modeling_demo import DeMoModel

    torch.manual_seed(0)
    return DeMoModel(tiny_config).eval()


def random_triples(batch: int, image_size=(32, 16), seed: int = 0) -> torch.Tensor:
    """Normalized-looking pixel values (B, 3, 3, H, W) in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 3, *image_size, generator=generator) * 2 - 1


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a multi-process launch (a fixed one collides with other jobs)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_tiny_dataset(base: Path, seed: int, num_train_ids: int, num_test_ids: int, images_per_id: int,
                       image_size=(32, 16), captions: bool = False, name: str = "ds") -> str:
    """A synthetic RGBNT201-layout release (real JPEGs) under ``base``, converted to Arrow; returns its path."""
    from mmreid.data.builder import build_dataset, save_dataset
    from mmreid.data.synthetic import make_synthetic

    root = make_synthetic("RGBNT201", base / "raw", seed=seed, num_train_ids=num_train_ids,
                          num_test_ids=num_test_ids, images_per_id=images_per_id, image_size=image_size)
    dataset = build_dataset("RGBNT201", root, captions_dir=root / "captions" if captions else None,
                            cache_dir=base / "cache")
    return str(save_dataset(dataset, base / name))


# The synthetic preset's tower ("tiny": 3 layers x 96) cut to one 32-wide layer for fast train.py runs in tests.
TINY_TOWER = ("vision_config.hidden_size=32,vision_config.intermediate_size=64,vision_config.num_attention_heads=1,"
              "vision_config.num_hidden_layers=1,vision_config.projection_dim=32")
TINY_MODEL_FLAGS = {
    "demo": ["--atmoe-heads", "2"],
    "next": ["--num-semantic-experts", "2", "--num-structure-experts", "2", "--tokens-per-expert", "2"],
    "idea": ["--num-text-prompts", "1", "--cda-kernel-size", "1", "--cda-stride", "1"],  # 4x2 patches: 4x2 points
}


def tiny_train_args(model: str = "demo") -> list[str]:
    """train.py flags that build a tiny ``model`` (32x16 images, one 32-wide tower layer); no progress bars."""
    overrides = TINY_TOWER + (",text_config.projection_dim=32" if model in ("next", "idea") else "")
    return ["--model", model, "--backbone", "tiny", "--config-overrides", overrides, "--image-size", "32", "16",
            *TINY_MODEL_FLAGS[model], "--disable-tqdm", "true"]


# The tiny in-process trainer runs of test_train.py and test_trainer_options.py: P x K = 3 x 2, one eval batch, a
# loss logged every step, no checkpoints unless a test asks.
TINY_TRAIN = [*tiny_train_args(), "--num-identities", "3", "--num-instances", "2", "--per-device-eval-batch-size",
              "32", "--logging-steps", "1", "--save-strategy", "no"]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """One small synthetic set for the whole session (read only: tests write their runs elsewhere)."""
    return build_tiny_dataset(tmp_path_factory.mktemp("synthetic"), seed=1, num_train_ids=8, num_test_ids=4,
                              images_per_id=5)


def tiny_trainer(dataset: str, tmp_path: Path, extra=()):
    """train.py's ReIDTrainer for TINY_TRAIN + ``extra`` on ``dataset``, output under ``tmp_path``, not yet run."""
    import train
    from mmreid.training.arguments import parse_args

    run = parse_args([*TINY_TRAIN, "--output-dir", str(tmp_path / "out"), "--dataset", dataset, *extra])
    return train.build_trainer(run)[0]


def train_gallery_model(dataset, out: Path, seed: int, steps: int = 40) -> Path:
    """A tiny DeMo trained ``steps`` steps with train.py on ``dataset`` (trained features, not random init), saved at
    ``out``; one torch thread, as the retrieval tests run."""
    import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main([*tiny_train_args(), "--dataset", str(dataset), "--output-dir", str(out), "--num-identities", "4",
                    "--num-instances", "2", "--max-steps", str(steps), "--save-strategy", "no", "--seed", str(seed)])
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def gallery_data(tmp_path_factory) -> Path:
    """The retrieval tests' synthetic set (test_retrieval.py, test_gallery_stores.py; read only): 6 test identities
    x 6 images, the release folder beside it at ``.parent / "raw"``."""
    return Path(build_tiny_dataset(tmp_path_factory.mktemp("gallery-data"), seed=3, num_train_ids=8, num_test_ids=6,
                                   images_per_id=6))


@pytest.fixture(scope="session")
def gallery_checkpoint(gallery_data, tmp_path_factory) -> Path:
    """The retrieval tests' model, trained once for the session (read only)."""
    return train_gallery_model(gallery_data, tmp_path_factory.mktemp("gallery-model") / "demo", seed=0)


def one_line_error(capsys, prog: str) -> str:
    """The one stderr line an entry point ``prog`` printed for bad input (``prog: error: ...``)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: "), err
    return err[0]


# The project's own modules: blocked in a fresh process, so only a checkpoint's own files can be used.
PROJECT_MODULES = ("mmreid", "configuration_reid", "modeling_reid", "configuration_demo", "modeling_demo",
                   "configuration_next", "modeling_next", "configuration_idea", "modeling_idea", "image_processing_reid", "processing_reid", "pipeline_reid")


def run_in_fresh_process(script: str, spec: dict, tmp_path: Path, env: dict | None = None) -> dict:
    """Run ``script`` (a template that blocks ``{modules}`` and reads the JSON file ``{spec}``) in a new interpreter,
    outside the repository, without PYTHONPATH; ``spec["output"]`` is the safetensors file it writes, returned as a
    dict of tensors. ``env`` (default: offline, one thread) is the process environment."""
    import json
    import subprocess

    from safetensors.torch import load_file

    spec = {**spec, "output": str(tmp_path / "fresh-process-output.safetensors")}
    spec_file = tmp_path / "fresh-process-spec.json"
    spec_file.write_text(json.dumps(spec))
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    work = tmp_path / "elsewhere"
    work.mkdir(exist_ok=True)
    code = script.format(modules=PROJECT_MODULES, spec=str(spec_file))
    result = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(spec["output"])


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str = "20m", read_only: bool = False):
    """A real tmpfs of ``size`` mounted at ``path`` (needs root with CAP_SYS_ADMIN); yields None where mounting is
    not allowed, so the caller can fall back."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write in: mode 0555 for a normal user; for root (who writes anywhere) a
    read-only tmpfs mount."""
    path = tmp_path / "read-only"
    if os.geteuid() != 0:
        path.mkdir()
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    with mounted_tmpfs(path, size="1m", read_only=True) as mounted:
        if mounted is not None:
            yield mounted
            return
        # root without the right to mount (a container without CAP_SYS_ADMIN): a kernel file system that takes no
        # new files (/sys is read-only there; /proc refuses them)
        for candidate in (Path("/sys"), Path("/proc")):
            try:
                with tempfile.TemporaryFile(dir=candidate):
                    pass
            except OSError:
                yield candidate
                return
        pytest.fail("no folder this root process cannot write in: mount a read-only tmpfs or run as a normal user")
