"""Past one machine: two torchrun "nodes" (--nnodes 2, one process each, static rendezvous on 127.0.0.1) train
with the losses of one process, the global-batch guarantee across machines; the multi-node accelerate config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_dataset, free_port, tiny_train_args

REPO = Path(__file__).resolve().parents[1]
ARGS = [*tiny_train_args(), "--num-identities", "4", "--num-instances", "2", "--logging-steps", "1",
        "--hdm-dropout", "0", "--max-steps", "6", "--save-strategy", "no"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("synthetic"), seed=4, num_train_ids=8, num_test_ids=4,
                              images_per_id=5)


def _losses(output_dir: Path, key: str) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [h[key] for h in history if key in h and "eval_mAP" not in h]


def test_two_nodes_give_the_losses_of_one_process(tiny_dataset, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one, two = tmp_path / "one", tmp_path / "two"
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *ARGS, "--dataset", tiny_dataset,
                           "--output-dir", str(one)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    port = str(free_port())
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
                               str(REPO / "train.py"), *ARGS, "--dataset", tiny_dataset, "--output-dir", str(two)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert json.loads((two / "run_info.json").read_text())["world_size"] == 2
    for key in ("loss", "id_loss", "triplet_loss"):
        a, b = _losses(one, key), _losses(two, key)
        assert len(a) == len(b) == 6
        for step, (x, y) in enumerate(zip(a, b), 1):
            assert abs(x - y) <= 1e-4 * abs(x), (key, step, x, y)


def test_multi_node_config_is_two_machines_with_static_rendezvous():
    config = yaml.safe_load((REPO / "accelerate_configs" / "multi_node.yaml").read_text())
    assert config["num_machines"] == 2 and config["rdzv_backend"] == "static"
    assert config["distributed_type"] == "MULTI_GPU" and config["num_processes"] % 2 == 0
    assert "own P x K" not in (REPO / "accelerate_configs" / "multi_gpu.yaml").read_text()
