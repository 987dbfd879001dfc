"""NEXT through the shared trainer, train.py and eval.py: captions in the batches, ablations, reports."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_train_args

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import eval as eval_script  # noqa: E402
import train  # noqa: E402
from mmreid.data.loading import load_reid_dataset  # noqa: E402
from mmreid.training.arguments import parse_args  # noqa: E402

TINY_NEXT = [
    *tiny_train_args("next"), "--num-identities", "4", "--num-instances", "2", "--per-device-eval-batch-size", "32",
    "--logging-steps", "1", "--save-strategy", "no",
]


@pytest.fixture(scope="module")
def captioned_dataset(tmp_path_factory):
    from mmreid.data.builder import build_dataset, save_dataset
    from mmreid.data.synthetic import make_synthetic

    base = tmp_path_factory.mktemp("next-synthetic")
    root = make_synthetic("RGBNT201", base / "raw", seed=3, num_train_ids=8, num_test_ids=4, images_per_id=5,
                          image_size=(32, 16))
    dataset = build_dataset("RGBNT201", root, captions_dir=root / "captions", cache_dir=base / "cache")
    return str(save_dataset(dataset, base / "ds"))


def _trainer(dataset, tmp_path, extra=()):
    return train.build_trainer(parse_args([*TINY_NEXT, "--dataset", dataset, "--output-dir", str(tmp_path / "out"),
                                           *extra]))[0]


def _epoch_batches(trainer, epoch):
    loader = trainer.get_train_dataloader()
    loader.set_epoch(epoch)
    return list(loader)


def test_training_batches_carry_per_expert_captions_reproducibly(captioned_dataset, tmp_path):
    """Each expert gets its own seeded subset of sentences; the draw depends on (seed, epoch, position) only."""
    trainer = _trainer(captioned_dataset, tmp_path)
    batch = _epoch_batches(trainer, 0)[0]
    assert set(batch) == {"pixel_values", "camera_ids", "input_ids", "attention_mask", "labels", "aug_seeds"}
    assert batch["input_ids"].shape[:3] == (8, 2, 3)  # (B, experts, modalities, L)
    tokenizer = trainer.processing_class
    texts = [[tokenizer.decode(batch["input_ids"][0, e, m], skip_special_tokens=True) for m in range(3)]
             for e in range(2)]
    assert any(texts[0][m] != texts[1][m] for m in range(3) if texts[0][m])  # experts see different sentences
    for workers in (0, 2):
        trainer.args.dataloader_num_workers = workers
        again = _epoch_batches(trainer, 0)
        assert torch.equal(again[0]["input_ids"], batch["input_ids"]), workers
    other_epoch = _epoch_batches(trainer, 1)[0]
    assert not torch.equal(other_epoch["input_ids"], batch["input_ids"])


def _sentence_counts(trainer, batches) -> list[int]:
    """Sentences of every non-empty per-expert caption in the batches (the tokenizer splits off each full stop)."""
    tokenizer = trainer.processing_class.tokenizer
    texts = [text for batch in batches
             for text in tokenizer.batch_decode(batch["input_ids"].flatten(0, 2), skip_special_tokens=True)]
    return [text.split().count(".") for text in texts if text.strip()]


@pytest.mark.parametrize("option, expected", [([], {1, 2, 3, 4, 5}), (["--caption-sentences-per-expert", "2"], {2})])
def test_training_caption_sentence_counts(captioned_dataset, tmp_path, option, expected):
    """Default: each expert reads a count of sentences drawn uniformly in [1, n] per modality (the synthetic captions
    have n = 5); --caption-sentences-per-expert 2: always 2 (the earlier default)."""
    trainer = _trainer(captioned_dataset, tmp_path, option)
    counts = _sentence_counts(trainer, _epoch_batches(trainer, 0) + _epoch_batches(trainer, 1))
    assert set(counts) == expected
    if not option:
        assert all(counts.count(c) >= len(counts) / 10 for c in expected)  # about 1/5 each


def test_evaluation_uses_whole_captions(captioned_dataset, tmp_path, monkeypatch):
    from mmreid import inference

    trainer = _trainer(captioned_dataset, tmp_path)
    collators = []  # the collator of each split the trainer's evaluation reads (through the one inference loop)
    real_loader = inference.DataLoader
    monkeypatch.setattr(inference, "DataLoader", lambda *a, **k: collators.append(k["collate_fn"]) or real_loader(*a, **k))
    trainer.evaluate()
    assert len(collators) == 2
    ds = load_reid_dataset(captioned_dataset)
    rows = [ds["query"][i] for i in range(3)]
    batch = collators[0](rows)
    assert batch["input_ids"].shape[:2] == (3, 3)
    tokenizer = trainer.processing_class
    for r, row in enumerate(rows):
        for m, column in enumerate(("caption_rgb", "caption_nir", "caption_tir")):
            decoded = tokenizer.decode(batch["input_ids"][r, m], skip_special_tokens=True)
            words = [w for w in row[column].lower().replace(".", " .").replace(",", " ,").split()]
            assert decoded.split() == words[: len(decoded.split())] and (not row[column] or decoded)
            assert bool(batch["attention_mask"][r, m].any()) == bool(row[column].strip())


@pytest.mark.parametrize("ablation, heads", [
    ([], ["final"]),
    (["--use-text", "false"], ["final"]),
    (["--use-tmse", "false"], ["final"]),
    (["--supervised-heads", "all"], ["cls", "semantic", "structure", "final"]),
    (["--supervised-heads", "all", "--use-tmse", "false"], ["cls", "structure"]),  # "final" needs both branches
    (["--supervised-heads", "all", "--use-csse", "false"], ["cls", "semantic"]),
])
def test_next_and_its_ablations_train(captioned_dataset, tmp_path, ablation, heads):
    trainer = _trainer(captioned_dataset, tmp_path, ["--max-steps", "3", *ablation])
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    batch = next(iter(trainer.get_train_dataloader()))
    out = trainer.model.eval()(**{k: v for k, v in batch.items() if k not in ("labels", "aug_seeds")})
    assert list(out.logits) == heads
    moved = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any(n.startswith("vision_tower.") for n in moved) and len(moved) > len(before) // 2
    assert not any(n.startswith("text_tower.") for n in moved)


def test_train_and_eval_scripts_serve_next(captioned_dataset, tmp_path):
    """train.py --model next writes a self-contained checkpoint (weights, code, tokenizer, card); eval.py reads the
    model type from it and reports NEXT's feature rows, the missing-modality table, complexity and pictures."""
    out = tmp_path / "next"
    result = train.main([*TINY_NEXT, "--dataset", captioned_dataset, "--output-dir", str(out), "--max-steps", "4"])
    assert result["global_step"] == 4
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "next_reid" and config["auto_map"]["AutoModel"] == "modeling_next.NextModel"
    files = {p.name for p in out.iterdir()}
    assert {"modeling_next.py", "configuration_next.py", "modeling_reid.py", "tokenizer.json"} <= files
    assert "modeling_demo.py" not in files and "configuration_demo.py" not in files  # the family's code, not DeMo's
    card = (out / "README.md").read_text()
    assert "NEXT" in card and "Our reading of the paper" in card and "not the authors'" in card
    assert "IEEE Transactions on Information Forensics and Security" in card and "pages   = {8371--8384}" in card
    report_dir = tmp_path / "eval"
    assert eval_script.main(["--model", str(out), "--dataset", captioned_dataset, "--output", str(report_dir),
                             "--missing", "r,nt", "--visualize", "--no-progress"]) == 0
    report = json.loads((report_dir / "eval_results.json").read_text())
    assert report["model_type"] == "next_reid" and report["headline_features"] == "final"
    assert list(report["results"]) == ["cls", "semantic", "structure", "final", "all"]
    assert report["results"]["final"]["mAP"] == pytest.approx(result["mAP"], abs=1e-6)
    assert set(report["missing_sweep"]["settings"]) == {"r", "nt"}
    assert report["complexity"]["params"] > 0 and report["complexity"]["macs"] > 0
    for figure in report["figures"]:
        assert Path(figure).stat().st_size > 1000


def test_model_options_of_the_other_model_are_refused(tmp_path, capsys):
    assert train.cli(["--model", "demo", "--num-semantic-experts", "4", "--output-dir", str(tmp_path / "a")]) == 2
    assert "--num-semantic-experts is not an option of DeMoConfig (--model demo)" in capsys.readouterr().err
    assert train.cli(["--model", "next", "--atmoe-heads", "2", "--output-dir", str(tmp_path / "b")]) == 2
    assert "--atmoe-heads is not an option of NextConfig (--model next)" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
