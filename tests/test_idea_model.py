"""IDEA in the family: the tower's extra tokens, captions through the shared data path, training through the shared
trainer (InverseNet, prompts and CDA's offsets learn), checks of its options and inputs."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import IMPORT_BLOCKER, tiny_train_args

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train  # noqa: E402
from configuration_idea import IdeaConfig  # noqa: E402
from mmreid.hub.backbones import tiny_text_config, tiny_vision_config  # noqa: E402
from mmreid.training.arguments import parse_args  # noqa: E402
from modeling_idea import IdeaModel  # noqa: E402
from modeling_reid import ReIDVisionTower  # noqa: E402

TINY_IDEA = [*tiny_train_args("idea"), "--num-identities", "4", "--num-instances", "2", "--save-strategy", "no",
             "--logging-steps", "1"]


def tiny_config(**overrides) -> IdeaConfig:
    options = dict(vision_config=tiny_vision_config("clip"), text_config=tiny_text_config(projection_dim=64),
                   image_size=(32, 16), num_labels=4, num_cameras=2, cda_kernel_size=1, cda_stride=1)
    options.update(overrides)
    return IdeaConfig(**options)


def captions(batch: int, length: int = 12, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(1, 60, (batch, 3, length), generator=torch.Generator().manual_seed(seed))
    ids[..., 0], ids[..., 9] = 62, 63  # start, end of text (tiny_text_config's ids); padding after it
    return ids


def test_tower_appends_extra_tokens_after_the_embeddings_and_encodes_them():
    torch.manual_seed(0)
    tower = IdeaModel(tiny_config()).vision_tower.eval()
    assert isinstance(tower, ReIDVisionTower)
    pixels = torch.randn(2, 3, 32, 16)
    extra = 5 * torch.randn(2, 1, 32)
    with torch.no_grad():
        plain = tower(pixels)
        with_extra = tower(pixels, extra_tokens=extra)
        moved = tower(pixels, extra_tokens=-extra)
    assert plain.shape == (2, 1 + 8, 64) and with_extra.shape == (2, 1 + 8 + 1, 64)
    # The extra token is attended to: it changes the class and patch outputs, and its own output is encoded.
    assert (with_extra[:, :9] - plain).abs().max() > 1e-4
    assert (moved[:, :9] - with_extra[:, :9]).abs().max() > 1e-4
    # Appended after the embedding stage (no position or camera vector of the image's) and before pre_layernorm.
    embedded = tower.embeddings(pixels)
    hidden = tower.pre_layernorm(torch.cat([embedded, extra], dim=1))
    for layer in tower.layers:
        hidden = layer(hidden, None)
    torch.testing.assert_close(tower.projection(tower.post_layernorm(hidden)), with_extra, rtol=0, atol=1e-6)


def test_features_follow_the_authors_layout_and_the_option_picks_the_retrieval_feature():
    torch.manual_seed(0)
    model = IdeaModel(tiny_config()).eval()
    pixels, cams, ids = torch.randn(2, 3, 3, 32, 16), torch.tensor([0, 1]), captions(2)
    with torch.no_grad():
        out = model(pixels, cams, ids)
    assert list(out.feature_sets) == ["LOCAL_t", "LOCAL_v", "LOCAL", "V_RGB", "V_NIR", "V_TIR", "T_RGB", "T_NIR",
                                      "T_TIR"]
    torch.testing.assert_close(out.embeddings, out.feature_sets["LOCAL_t"])
    torch.testing.assert_close(out.feature_sets["LOCAL"],
                               torch.cat([out.feature_sets["LOCAL_v"], out.feature_sets["LOCAL_t"]], dim=-1))
    assert list(out.logits) == ["V", "T", "LOCAL_v", "LOCAL_t"]
    model.config.inference_features = "LOCAL_v"
    with torch.no_grad():
        torch.testing.assert_close(model(pixels, cams, ids).embeddings, out.feature_sets["LOCAL_v"])
    # Padding after the end-of-text token changes nothing (causal attention, as the authors' text tower).
    padded = ids.clone()
    padded[..., 10:] = 5
    with torch.no_grad():
        padded_out = model(pixels, cams, padded)
    torch.testing.assert_close(padded_out.feature_sets["LOCAL_t"], out.embeddings, rtol=0, atol=1e-6)
    per_modality = IdeaModel(tiny_config(concatenated_heads=False)).eval()
    with torch.no_grad():
        assert list(per_modality(pixels, cams, ids).logits) == ["V_RGB", "V_NIR", "V_TIR", "T_RGB", "T_NIR", "T_TIR",
                                                                "LOCAL_v", "LOCAL_t"]


def test_a_cda_without_two_sampling_points_per_direction_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"gives 3x1 sampling points on the 4x2 patch grid.*lower them"):
        tiny_config(cda_kernel_size=2, cda_stride=1)
    with pytest.raises(ValueError, match="caption_prefix must be one of"):
        tiny_config(caption_prefix="market1501")


class Words:  # a whitespace tokenizer with ids the test can read back
    pad_token_id, model_max_length = 0, 77

    def __init__(self):
        self.vocab = {}

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        rows = [[self.vocab.setdefault(w, len(self.vocab) + 1) for w in t.split()][:max_length] for t in texts]
        length = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (length - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}



def test_training_batches_carry_whole_prefixed_captions_and_a_missing_one_is_the_prefix_alone(tmp_path):
    from mmreid.data.collate import collator_for

    trainer_config = tiny_config(num_text_prompts=1)
    prefixes = trainer_config.caption_prefixes
    assert prefixes[1] == ("An image of a X person in the near infrared spectrum, capturing contrasts and surface "
                           "reflectance: ")

    tokenizer = Words()
    collate = collator_for(trainer_config, train=True, tokenizer=tokenizer)
    caption = "He walks. He carries a bag. He wears a cap."
    batch = collate.text([[caption, "", caption]], seeds=[7])
    assert batch["input_ids"].shape[:2] == (1, 3)  # one whole caption per modality, no expert axis
    words = {i: w for w, i in tokenizer.vocab.items()}
    decoded = [" ".join(words[int(i)] for i in row if i) for row in batch["input_ids"][0]]
    assert decoded[0] == (prefixes[0] + caption).strip()
    assert decoded[1] == prefixes[1].strip()  # the authors' find_annotation gives "" and the prefix stays
    assert bool(batch["attention_mask"][0, 1].any())


@pytest.fixture(scope="module")
def captioned_dataset(tmp_path_factory):
    from mmreid.data.builder import build_dataset, save_dataset
    from mmreid.data.synthetic import make_synthetic

    base = tmp_path_factory.mktemp("idea-synthetic")
    root = make_synthetic("RGBNT201", base / "raw", seed=3, num_train_ids=6, num_test_ids=3, images_per_id=4,
                          image_size=(32, 16))
    dataset = build_dataset("RGBNT201", root, captions_dir=root / "captions", cache_dir=base / "cache")
    return str(save_dataset(dataset, base / "ds"))


def test_training_moves_the_inverse_net_the_prompts_and_the_offsets(captioned_dataset, tmp_path):
    """A short run of the shared trainer: the InverseNet, the prompt vectors and CDA's offset network change, and on
    the trained weights they still receive gradient from the loss over IDEA's heads; the text tower stays frozen."""
    trainer = train.build_trainer(parse_args([*TINY_IDEA, "--dataset", captioned_dataset, "--output-dir",
                                              str(tmp_path / "out"), "--max-steps", "4"]))[0]
    model = trainer.model
    learned = ("text_prompts", "inverse_net.fc1.weight", "inverse_net.fc2.weight", "inverse_net.position_embedding",
               "aggregation.offset_net.0.weight", "aggregation.offset_net.2.weight", "aggregation.offset_net.4.weight")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    params = dict(model.named_parameters())
    for name in learned:
        assert (params[name].detach() - before[name]).abs().max() > 1e-5, name
    for name, p in params.items():
        if name.startswith("text_tower."):
            assert not p.requires_grad and torch.equal(p.detach(), before[name]), name

    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    model.zero_grad()
    loss, output = trainer.compute_loss(model, batch, return_outputs=True)
    loss.backward()
    assert set(output.logits) == {"V", "T", "LOCAL_v", "LOCAL_t"}
    for name in learned:
        assert params[name].grad is not None and params[name].grad.abs().max() > 0, name


FRESH_PROCESS = IMPORT_BLOCKER + '''
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModel, AutoProcessor, pipeline

spec = json.loads(open({spec!r}).read())
images = [[Image.open(p) for p in triple] for triple in spec["images"]]
model = AutoModel.from_pretrained(spec["checkpoint"], trust_remote_code=True).eval()
inputs = AutoProcessor.from_pretrained(spec["checkpoint"], trust_remote_code=True)(
    images, camera_ids=[0, 1], text=spec["captions"])
rows = pipeline("image-feature-extraction", model=spec["checkpoint"], trust_remote_code=True)(
    images, camera_ids=[0, 1], text=spec["captions"])
with torch.no_grad():
    save_file({{"embeddings": model(**inputs).embeddings.contiguous(), "input_ids": inputs["input_ids"].contiguous(),
               "pipeline": torch.stack([torch.as_tensor(r["embedding"]) for r in rows])}}, spec["output"])
'''


def test_a_trained_checkpoint_ships_its_files_and_embeds_prefixed_captions_anywhere(captioned_dataset, tmp_path):
    """train.py --model idea writes a checkpoint with the family's files and IDEA's; in a fresh process without the
    project, AutoModel + AutoProcessor and pipeline() give the embeddings the loader eval.py uses gives, the
    processor putting the modality prefix before each caption (a missing one: the prefix alone); eval.py runs the
    missing-modality sweep on it."""
    import json

    import eval as eval_script
    from conftest import run_in_fresh_process
    from datasets import load_from_disk
    from PIL import Image

    from mmreid.hub.loading import load_checkpoint, load_checkpoint_tokenizer
    from mmreid.hub.processors import build_processor

    out = tmp_path / "idea"
    train.main([*TINY_IDEA, "--dataset", captioned_dataset, "--output-dir", str(out), "--max-steps", "2"])
    code = {p.name for p in out.iterdir() if p.suffix == ".py"}
    assert {"configuration_reid.py", "modeling_reid.py", "configuration_idea.py", "modeling_idea.py"} <= code
    assert not code & {"configuration_demo.py", "modeling_demo.py", "configuration_next.py", "modeling_next.py"}

    test_rows = load_from_disk(captioned_dataset)["query"].select(range(2))
    paths = []
    for s, row in enumerate(test_rows):
        triple = []
        for m in ("rgb", "nir", "tir"):
            path = tmp_path / f"s{s}_{m}.png"
            image = row[m] if isinstance(row[m], Image.Image) else Image.open(row[m]["path"])
            image.convert("RGB").save(path)
            triple.append(str(path))
        paths.append(triple)
    captions = [["A man in a red coat.", "", "A warm silhouette."], ["A woman with a bag.", "Bright legs.", None]]
    got = run_in_fresh_process(FRESH_PROCESS, {"checkpoint": str(out), "images": paths, "captions": captions},
                               tmp_path)
    model = load_checkpoint(str(out)).eval()
    tokenizer = load_checkpoint_tokenizer(str(out), model)
    images = [[Image.open(p) for p in triple] for triple in paths]
    inputs = build_processor(model.config, tokenizer)(images, camera_ids=[0, 1], text=captions)
    torch.testing.assert_close(got["input_ids"], inputs["input_ids"], rtol=0, atol=0)
    assert tokenizer.decode(inputs["input_ids"][0, 1], skip_special_tokens=True).startswith("an image of a")
    assert bool(inputs["attention_mask"][1, 2].any())  # None: the prefix alone, not "no caption"
    with torch.no_grad():
        expected = model(**inputs).embeddings
    torch.testing.assert_close(got["embeddings"], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got["pipeline"], expected, rtol=0, atol=1e-5)

    assert eval_script.main(["--model", str(out), "--dataset", captioned_dataset, "--output", str(tmp_path / "eval"),
                             "--missing-sweep", "--no-progress", "--no-complexity"]) == 0
    report = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert report["captions"] == "used"


def test_next_offers_ideas_caption_prefix_after_its_sentence_sampling():
    """NEXT's option `caption_prefix` (IDEA's choice; default None, NEXT's own): each expert's sampled sentences get
    the modality's prefix, a missing caption is the prefix alone; without it the captions are as they were."""
    from mmreid.data.collate import collator_for
    from mmreid.hub.backbones import tiny_next_config

    caption = "He walks. He carries a bag. He wears a cap. He is tall."
    for prefix in (None, "rgbnt100"):
        config = tiny_next_config(caption_prefix=prefix, num_semantic_experts=2)
        tokenizer = Words()
        batch = collator_for(config, train=True, tokenizer=tokenizer).text([[caption, "", caption]], seeds=[3])
        words = {i: w for w, i in tokenizer.vocab.items()}
        decoded = [[" ".join(words[int(i)] for i in row if i) for row in expert] for expert in batch["input_ids"][0]]
        for expert in decoded:
            if prefix is None:
                assert expert[1] == "" and expert[0].split()[0] == "He"
            else:
                assert expert[0].startswith("An image of a vehicle in the visible spectrum: He")
                assert expert[1] == "An image of a vehicle in the near infrared spectrum:"
        assert tiny_next_config().caption_prefixes is None


# ../shared/data/idea_captions beside the checkout (or beside the folder of worktrees).
IDEA_CAPTIONS = next((base / "shared" / "data" / "idea_captions" for base in (REPO.parent, REPO.parent.parent)
                      if (base / "shared" / "data" / "idea_captions").is_dir()), REPO.parent / "shared")


@pytest.mark.parametrize("dataset", ["RGBNT201", "RGBNT100", "MSVR310"])
def test_the_builder_reads_the_idea_authors_released_captions(dataset):
    """The IDEA authors' released caption files (QwenVL_Anno; same JSON format as NEXT's) load through the
    builder's --captions reader; skipped where the files are absent (CI)."""
    import json

    from mmreid.data.builder import load_captions

    folder = IDEA_CAPTIONS / dataset
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    captions = load_captions(folder)
    for split, tag, modality in (("train", "RGB", "rgb"), ("test", "TI", "tir")):
        raw = json.loads((folder / f"{split}_{tag}.json").read_text(encoding="utf-8"))
        assert len(captions[split][modality]) == len({entry["item"] for entry in raw}) > 0
        first = raw[0]
        assert captions[split][modality][first["item"]] == first["description"]


@pytest.mark.parametrize("preset,expected", [
    ("rgbnt201", dict(num_text_prompts=2, cda_offset_factor=5.0, concatenated_heads=True, caption_prefix="rgbnt201")),
    ("rgbnt100", dict(num_text_prompts=1, cda_offset_factor=21.0, concatenated_heads=False, caption_prefix="rgbnt100")),
    ("msvr310", dict(num_text_prompts=1, cda_offset_factor=25.0, concatenated_heads=True, caption_prefix="msvr310")),
])
def test_each_preset_carries_the_authors_idea_recipe(preset, expected, tmp_path):
    """configs/<preset>.yaml's `idea:` section: the authors' IDEA.yml for that dataset (model options, and where it
    differs from DeMo's recipe, the schedule and batch), applied only with --model idea."""
    run = parse_args(["--model", "idea", "--preset", preset, "--dataset", str(tmp_path), "--output-dir",
                      str(tmp_path / "out")])
    assert {k: run.model_options[k] for k in expected} == expected
    schedule = (run.training.num_train_epochs, run.training.warmup_epochs, run.training.num_identities,
                run.training.num_instances)
    assert schedule == {"rgbnt201": (50, 10, 8, 8), "rgbnt100": (50, 10, 8, 16), "msvr310": (50, 10, 8, 8)}[preset]
    demo = parse_args(["--model", "demo", "--preset", preset, "--dataset", str(tmp_path), "--output-dir",
                       str(tmp_path / "out")])
    assert "cda_offset_factor" not in demo.model_options


def test_macs_with_captions_count_the_text_tower():
    """eval.py's complexity row of a model that reads captions: three captions of L tokens add at least the text
    encoder's own multiply-accumulates (counted by hand from its config; IDEA's caption-guided heads add more).
    Before, the row counted the images alone."""
    from mmreid.evaluation.complexity import count_macs

    model, length = IdeaModel(tiny_config()), 12
    text = model.config.text_config
    h, i = text.hidden_size, text.intermediate_size
    per_layer = length * (4 * h * h + 2 * h * i) + 2 * length * length * h  # q, k, v, out; MLP; scores and mix
    encoder = 3 * (text.num_hidden_layers * per_layer + h * text.projection_dim)
    added = count_macs(model, caption_length=length) - count_macs(model)
    assert added >= encoder > 0
