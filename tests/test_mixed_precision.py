"""Mixed precision is checked, not assumed: under bf16 (and fp16) autocast the loss, the triplet distances and every
BatchNorm's statistics are computed in float32, and `train.py --bf16 --use-cpu` trains with finite losses close to
the fp32 run's. (`--fp16` is CUDA-only: refused on CPU, tests/test_train.py; docs/performance.md.)"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_dataset, random_triples, tiny_train_args
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train  # noqa: E402
from mmreid.hub.backbones import tiny_demo_config  # noqa: E402
from mmreid.training.losses import ReIDLoss, euclidean_distance  # noqa: E402
from modeling_demo import DeMoModel  # noqa: E402

LOW_PRECISION = [torch.bfloat16, torch.float16]


class BatchNormDtypes(TorchDispatchMode):
    """Records the input dtype of every batch-norm kernel that runs."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "batch_norm" in func.__name__ and "backward" not in func.__name__:
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_triplet_distances_are_float32_under_autocast(dtype):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(16, 96, generator=generator) * 3 + 10).to(dtype)  # large common offset: cancellation-prone
    with torch.autocast("cpu", dtype=dtype):
        dist = euclidean_distance(x, x)
    reference = torch.cdist(x.double(), x.double())
    assert dist.dtype == torch.float32
    off_diagonal = ~torch.eye(16, dtype=torch.bool)
    torch.testing.assert_close(dist[off_diagonal].double(), reference[off_diagonal], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_loss_under_autocast_is_the_float32_loss(dtype):
    """The loss of low-precision model outputs under autocast equals the float32 loss of the same values."""
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(4)
    logits = {"ori": torch.randn(16, 171).to(dtype), "moe": torch.randn(16, 171).to(dtype)}
    features = {"ori": (torch.randn(16, 384) + 5).to(dtype), "moe": (torch.randn(16, 896) + 5).to(dtype)}
    outputs = type("Out", (), {"logits": logits, "features": features})()
    loss = ReIDLoss()
    with torch.autocast("cpu", dtype=dtype):
        mixed = loss(outputs, labels)
    as_float = type("Out", (), {"logits": {k: v.float() for k, v in logits.items()},
                                "features": {k: v.float() for k, v in features.items()}})()
    exact = loss(as_float, labels)
    assert mixed.loss.dtype == torch.float32
    torch.testing.assert_close(mixed.loss, exact.loss, rtol=1e-6, atol=1e-6)
    for name in exact.components:
        torch.testing.assert_close(mixed.components[name], exact.components[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_every_batch_norm_runs_in_float32_under_autocast(dtype):
    """BN-necks, the ATMoE gate's BN and the stacked expert BNs of a training forward + backward under autocast."""
    torch.manual_seed(0)
    model = DeMoModel(tiny_demo_config(num_labels=6, num_cameras=3, image_size=(32, 16), atmoe_heads=2)).train()
    recorder = BatchNormDtypes()
    with recorder, torch.autocast("cpu", dtype=dtype):
        out = model(random_triples(8), camera_ids=torch.zeros(8, dtype=torch.long))
        assert out.logits["ori"].dtype == dtype  # autocast is really on
        loss = sum(v.float().logsumexp(-1).mean() for v in out.logits.values())
    loss.backward()
    # 2 BN-necks (ori, moe) + the gate's reduction BN + one stacked BN over all experts
    assert len(recorder.dtypes) == 4 and set(recorder.dtypes) == {torch.float32}, recorder.dtypes
    for name, buffer in model.named_buffers():
        if "running" in name:
            assert buffer.dtype == torch.float32 and torch.isfinite(buffer).all(), name


@pytest.fixture(scope="module")
def bf16_and_fp32_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("bf16")
    dataset = build_tiny_dataset(base, seed=1, num_train_ids=8, num_test_ids=4, images_per_id=5)
    common = [*tiny_train_args(), "--dataset", dataset, "--num-identities", "3", "--num-instances", "2",
              "--max-steps", "30", "--logging-steps", "1", "--save-strategy", "no"]
    results = {}
    for name, extra in (("fp32", []), ("bf16", ["--bf16", "--use-cpu"])):
        out = base / name
        result = train.main([*common, *extra, "--output-dir", str(out)])
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        results[name] = ([h["loss"] for h in history if "loss" in h], result)
    return results


def test_bf16_training_has_finite_losses_close_to_fp32(bf16_and_fp32_runs):
    (fp32_losses, fp32), (bf16_losses, bf16) = bf16_and_fp32_runs["fp32"], bf16_and_fp32_runs["bf16"]
    assert len(bf16_losses) == len(fp32_losses) == 30
    assert all(math.isfinite(v) for v in bf16_losses)
    assert bf16_losses != fp32_losses  # bf16 autocast really ran
    # Same weights and batch at step 1: only rounding differs (bf16 keeps about 3 significant digits).
    assert bf16_losses[0] == pytest.approx(fp32_losses[0], rel=1e-2)
    assert math.isfinite(bf16["mAP"]) and bf16["global_step"] == fp32["global_step"] == 30
