"""`train.py --report-to tensorboard`: what reaches the event file (loss parts, every lr group, eval metrics) and the
one-line refusal when the tensorboard package is missing."""

import json
import math
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_dataset, tiny_train_args

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train  # noqa: E402
from mmreid.training.scheduler import demo_cosine_lr  # noqa: E402
from mmreid.training.trainer import PARAM_GROUPS  # noqa: E402

EPOCHS, WARMUP = 3, 2  # epoch 1 in warm-up, epoch 2 on the cosine, epoch 3 at the floor
LR, TOWER_LR, BIAS_FACTOR = 2e-3, 5e-4, 2.0  # three different group lrs: a mislabelled group cannot pass
TINY = [
    *tiny_train_args(), "--num-identities", "3", "--num-instances", "2", "--per-device-eval-batch-size", "32",
    "--logging-steps", "1", "--save-strategy", "no",
    "--num-train-epochs", str(EPOCHS), "--warmup-epochs", str(WARMUP), "--eval-strategy", "epoch",
    "--learning-rate", str(LR), "--vision-tower-lr", str(TOWER_LR), "--bias-lr-factor", str(BIAS_FACTOR),
]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("synthetic"), seed=1, num_train_ids=8, num_test_ids=4,
                              images_per_id=5)


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_file_holds_loss_parts_group_lrs_and_eval_metrics(tiny_dataset, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    result = train.main([*TINY, "--dataset", tiny_dataset, "--report-to", "tensorboard", "--output-dir", str(out)])

    # transformers 5 writes under <output_dir>/runs/<date>_<host>/ (TENSORBOARD_LOGGING_DIR unset): one run here
    runs = [p for p in (out / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1 and list(runs[0].glob("events.out.tfevents.*")), runs
    scalars = _scalars(runs[0])
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = result["global_step"]
    steps_per_epoch = steps // EPOCHS
    assert steps == steps_per_epoch * EPOCHS and steps_per_epoch >= 2

    # losses: one point per optimizer step (--logging-steps 1), positive, finite, equal to the logged history
    for key in ("loss", "id_loss", "triplet_loss"):
        points = scalars[f"train/{key}"]
        assert [s for s, _ in points] == list(range(1, steps + 1)), key
        assert all(math.isfinite(v) and v > 0 for _, v in points), (key, points)
        logged = [h[key] for h in history if key in h]
        assert [v for _, v in points] == pytest.approx(logged, rel=1e-6), key
    # the parts are the unweighted ID and triplet sums: loss = 0.25 x ID + 1.0 x triplet (the recipe's weights)
    total = [0.25 * i + t for (_, i), (_, t) in zip(scalars["train/id_loss"], scalars["train/triplet_loss"])]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(total, rel=1e-5)

    # each group's lr at each step is what the per-epoch schedule gives the epoch of that step
    bases = {"head": LR, "head_bias": LR * BIAS_FACTOR, "vision_tower": TOWER_LR}
    assert set(PARAM_GROUPS) == set(bases)
    for group in PARAM_GROUPS:
        points = scalars[f"train/learning_rate/{group}"]
        assert [s for s, _ in points] == list(range(1, steps + 1)), group
        expected = [demo_cosine_lr((s - 1) // steps_per_epoch + 1, bases[group], EPOCHS, WARMUP, 0.1 * LR, 1e-3 * LR)
                    for s, _ in points]
        assert [v for _, v in points] == pytest.approx(expected, rel=1e-6), group
    # the Trainer's own learning_rate is the head group's
    assert scalars["train/learning_rate"] == scalars["train/learning_rate/head"]

    # eval: one point per epoch plus train.py's final evaluation, equal to trainer_state.json's log history
    for key in ("mAP", "Rank-1"):
        points = scalars[f"eval/{key}"]
        epochs_ends = [steps_per_epoch * (e + 1) for e in range(EPOCHS)]
        assert [s for s, _ in points] == [*epochs_ends, steps], key
        logged = [h[f"eval_{key}"] for h in history if f"eval_{key}" in h]
        assert [v for _, v in points] == pytest.approx(logged, rel=1e-6), key
        assert all(0.0 <= v <= 100.0 for _, v in points)
    assert scalars["eval/mAP"][-1][1] == pytest.approx(result["mAP"], rel=1e-6)


def test_missing_tensorboard_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """The Trainer alone would fail with a traceback, after the dataset is built and the output directory cleared."""
    for name in ("tensorboard", "tensorboardX"):
        monkeypatch.setitem(sys.modules, name, None)  # importlib.util.find_spec answers None: as if not installed
    monkeypatch.chdir(tmp_path)
    code = train.cli(["--output-dir", str(tmp_path / "out"), "--synthetic-dir", str(tmp_path / "syn"),
                      "--report-to", "tensorboard"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("train.py: error: --report-to"), err
    assert "pip install tensorboard" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_unknown_integration_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = train.cli(["--output-dir", str(tmp_path / "out"), "--synthetic-dir", str(tmp_path / "syn"),
                      "--report-to", "tensorbord"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--report-to tensorbord" in err[0] and "tensorboard" in err[0], err
    assert list(tmp_path.iterdir()) == []
