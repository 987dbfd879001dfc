"""The ReID family as a platform: one registry of models, the family's files shipped with every checkpoint, towers
loaded quietly where nothing is wrong, caption tokenizers that can read the captions, and evaluation that says when
a text model runs without captions."""

import ast
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import IMPORT_BLOCKER, build_tiny_dataset, tiny_train_args
from transformers import CLIPConfig, CLIPModel, ViTModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import eval as eval_script  # noqa: E402
import train  # noqa: E402
from mmreid.hub.backbones import tiny_vision_config  # noqa: E402
from mmreid.models import BUILTIN_MODELS  # noqa: E402

# The top-level modules of one model (not the family's): only the registry may import them.
MODEL_MODULES = {"configuration_demo", "modeling_demo", "configuration_next", "modeling_next", "configuration_idea",
                 "modeling_idea"}
# Library modules still allowed to import them: the registry, and the tiny per-model configs that tests build.
# Besides the registry: the tiny test configs of each built-in model, and the converter of the authors' DeMo
# checkpoints (a file format of DeMo's authors' code, so DeMo's by nature), and that of IDEA's authors' checkpoints.
ALLOWED = {"mmreid/models.py", "mmreid/hub/backbones.py", "mmreid/hub/conversion.py", "mmreid/hub/conversion_idea.py"}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
    return names


def test_only_the_registry_imports_a_models_own_files():
    """Factory, --help, collator, processor and model card read the registry (mmreid/models.py), not a model's
    files; the family files import no model's files either."""
    offenders = {}
    for path in sorted((REPO / "mmreid").rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        used = _imported_modules(path) & MODEL_MODULES
        if used and relative not in ALLOWED:
            offenders[relative] = sorted(used)
    assert offenders == {}
    for family_file in ("configuration_reid.py", "modeling_reid.py", "image_processing_reid.py", "processing_reid.py",
                        "pipeline_reid.py"):
        text = (REPO / family_file).read_text()
        assert not re.search(r"(configuration|modeling)_(demo|next|idea)\b", text.split('"""', 2)[-1]), family_file


def test_the_registry_feeds_help_factory_and_card():
    from mmreid.hub.factory import ModelRecipe
    from mmreid.hub.model_card import ModelCardInfo, build_model_card
    from mmreid.training.arguments import build_parser

    help_text = build_parser().format_help()
    for name, entry in BUILTIN_MODELS.items():
        assert f"{entry.options_group}:" in help_text, name
        recipe = ModelRecipe.resolve(name, "tiny", {})
        assert (recipe.config_class, recipe.model_class) == (entry.config_class, entry.model_class)
        info = ModelCardInfo(model_type=entry.model_type, name="m", repo_id="u/m", dataset_name="synthetic",
                             dataset_description="the synthetic set", backbone="tiny", metrics={"mAP": 50.0})
        card = str(build_model_card(info))
        assert entry.card.description in card and all(tag in card for tag in entry.card.tags)
    remote = str(build_model_card(ModelCardInfo(model_type="baseline_reid", name="m", repo_id="u/m",
                                                dataset_name="synthetic", dataset_description="d", backbone="tiny",
                                                metrics={})))
    assert "(baseline_reid)" in remote


def test_the_processor_follows_the_config_not_the_model_name():
    """A model that reads captions gets the family's caption processor, any other the image processor, whatever
    the model is called (a remote-code model declares `uses_text` on its config)."""
    from configuration_reid import ReIDConfig
    from mmreid.data.text import build_caption_tokenizer
    from mmreid.hub.processors import build_processor
    from image_processing_reid import DeMoImageProcessor, ReIDImageProcessor
    from processing_reid import NextProcessor, ReIDProcessor

    assert DeMoImageProcessor is ReIDImageProcessor and NextProcessor is ReIDProcessor  # old names still load

    class TextConfig(ReIDConfig):
        model_type = "someone_elses_text_reid"
        uses_text = True

    tokenizer = build_caption_tokenizer(["a man walks left ."], model_max_length=16)
    image_only = build_processor(ReIDConfig(vision_config=tiny_vision_config().to_dict(), image_size=(32, 16)),
                                 tokenizer)
    assert type(image_only) is ReIDImageProcessor
    with_text = build_processor(TextConfig(vision_config=tiny_vision_config().to_dict(), image_size=(32, 16)),
                                tokenizer)
    assert type(with_text) is ReIDProcessor and with_text.caption_max_length == 16


# ------------------------------------------------------------------------------------------- quiet tower loading


def _tiny_clip_folder(path: Path) -> Path:
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)
    CLIPModel(CLIPConfig(text_config=text, vision_config=tiny_vision_config("clip").to_dict(),
                         projection_dim=64)).save_pretrained(path)
    return path


def test_loading_a_tower_lists_no_expected_unused_keys_but_still_lists_others(tmp_path):
    """A full CLIP checkpoint's text tower and logit scale, a ViT's pooler: unused by design, not listed; a key
    nobody expects is still reported as UNEXPECTED (transformers' load report, on its logger)."""
    import io
    import logging

    from safetensors.torch import load_file, save_file

    from modeling_demo import DeMoModel

    torch.manual_seed(0)
    clip = _tiny_clip_folder(tmp_path / "clip")
    vit_tower = ViTModel(tiny_vision_config("vit"), add_pooling_layer=True)
    vit_tower.save_pretrained(tmp_path / "vit")
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logging.getLogger("transformers").addHandler(handler)
    try:
        DeMoModel.from_pretrained_towers(clip, image_size=(32, 16), num_labels=4)
        vit = DeMoModel.from_pretrained_towers(tmp_path / "vit", image_size=(32, 16), num_labels=4)
        quiet = log.getvalue()
        weights = load_file(clip / "model.safetensors")
        weights["vision_model.stray_adapter.weight"] = torch.zeros(2)
        save_file(weights, clip / "model.safetensors", metadata={"format": "pt"})
        DeMoModel.from_pretrained_towers(clip, image_size=(32, 16), num_labels=4)
        loud = log.getvalue()[len(quiet):]
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert "UNEXPECTED" not in quiet and "MISSING" not in quiet, quiet
    assert "vision_model.stray_adapter.weight" in loud and "UNEXPECTED" in loud, loud
    # the quiet loader still loads every weight (ViT's saved keys are converted as without it)
    torch.testing.assert_close(vit.vision_tower.layers[1].mlp.fc1.weight, vit_tower.layers[1].mlp.fc1.weight)


# ------------------------------------------------------------------------------------- tokenizers for captions


@pytest.fixture(scope="module")
def captioned_dataset(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("captioned"), seed=3, num_train_ids=4, num_test_ids=2,
                              images_per_id=4, captions=True)


def test_a_clip_folder_without_tokenizer_files_is_refused_before_any_work(captioned_dataset, tmp_path, capsys):
    """transformers gives such a folder a 2-entry tokenizer that reads every word as one unknown id: refused in one
    line naming the folder, with nothing written."""
    clip = _tiny_clip_folder(tmp_path / "clip-no-tokenizer")
    out = tmp_path / "out"
    capsys.readouterr()
    code = train.cli(["--model", "next", "--backbone", str(clip), "--dataset", captioned_dataset, "--image-size", "32",
                      "16", "--num-identities", "2", "--num-instances", "2", "--max-steps", "1",
                      "--output-dir", str(out), "--disable-tqdm", "true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"--backbone {clip}" in err[0] and "cannot encode the captions" in err[0] and "vocabulary of 2 tokens" in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_tokenizer_problem_accepts_a_tokenizer_that_reads_the_captions():
    from mmreid.data.text import build_caption_tokenizer
    from mmreid.hub.factory import tokenizer_problem

    captions = [f"a person number {i} in a red coat walks to the left ." for i in range(40)]
    assert tokenizer_problem(build_caption_tokenizer(captions, model_max_length=32), captions) is None
    other = [f"{w}{i}" for i in range(40) for w in ("zebra", "quartz")]
    assert "unknown token" in tokenizer_problem(build_caption_tokenizer(captions, model_max_length=32), other)
    assert "a vocabulary of" in tokenizer_problem(build_caption_tokenizer(["a b ."], model_max_length=8), ["a b ."])


# ------------------------------------------------------------------------ checkpoints written before the family


OLD = REPO / "tests" / "fixtures" / "old_checkpoints"
FRESH_PROCESS = IMPORT_BLOCKER + '''
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModel, AutoProcessor, pipeline

spec = json.loads(open({spec!r}).read())
images = [[Image.open(p) for p in triple] for triple in spec["images"]]
kwargs = {{"text": spec["captions"]}} if spec["captions"] else {{}}
model = AutoModel.from_pretrained(spec["checkpoint"], trust_remote_code=True).eval()
inputs = AutoProcessor.from_pretrained(spec["checkpoint"], trust_remote_code=True)(images, camera_ids=[0, 1], **kwargs)
rows = pipeline("image-feature-extraction", model=spec["checkpoint"], trust_remote_code=True)(
    images, camera_ids=[0, 1], **kwargs)
with torch.no_grad():
    save_file({{"embeddings": model(**inputs).embeddings.contiguous(),
               "pipeline": torch.stack([torch.as_tensor(r["embedding"]) for r in rows])}}, spec["output"])
'''


def _old_inputs(kind: str):
    from PIL import Image

    images = [[OLD / f"sample{s}_{m}.png" for m in ("rgb", "nir", "tir")] for s in range(2)]
    captions = json.loads((OLD / "captions.json").read_text()) if kind == "next" else None
    return images, captions, [[Image.open(p) for p in triple] for triple in images]


@pytest.mark.parametrize("kind", ["demo", "next"])
def test_checkpoints_saved_before_the_family_files_give_their_embeddings(kind, tmp_path):
    """A DeMo and a NEXT checkpoint written by train.py at 11cf0ef (tests/fixtures/make_old_checkpoints.py): in a
    fresh process without the project, AutoModel + AutoProcessor and pipeline() give the embeddings that code gave;
    here, the loader eval.py uses and today's processors (the family's, built from the config) give them too."""
    from conftest import run_in_fresh_process
    from safetensors.torch import load_file

    from mmreid.hub.loading import load_checkpoint, load_checkpoint_tokenizer
    from mmreid.hub.processors import build_processor

    expected = load_file(OLD / "expected.safetensors")
    paths, captions, images = _old_inputs(kind)
    got = run_in_fresh_process(FRESH_PROCESS, {"checkpoint": str(OLD / kind), "captions": captions,
                                               "images": [[str(p) for p in t] for t in paths]}, tmp_path)
    # Embeddings within 1e-6: the thread count (1 when the fixture was made, 2 here by default) changes the order of
    # the float sums; a change of the model's math moves them by orders of magnitude more.
    torch.testing.assert_close(got["embeddings"], expected[f"{kind}.embeddings"], rtol=0, atol=1e-6)
    torch.testing.assert_close(got["pipeline"], expected[f"{kind}.pipeline_embeddings"], rtol=0, atol=1e-6)

    model = load_checkpoint(str(OLD / kind)).eval()
    tokenizer = load_checkpoint_tokenizer(str(OLD / kind), model)
    assert (tokenizer is not None) == (kind == "next")
    inputs = build_processor(model.config, tokenizer)(images, camera_ids=[0, 1],
                                                      **({"text": captions} if captions else {}))
    for key, value in inputs.items():  # today's processors turn the images (and captions) into the same inputs
        torch.testing.assert_close(value, expected[f"{kind}.{key}"], rtol=0, atol=0, msg=key)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).embeddings, expected[f"{kind}.embeddings"], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def uncaptioned_dataset(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("uncaptioned"), seed=4, num_train_ids=4, num_test_ids=2,
                              images_per_id=4)


def test_eval_of_a_text_model_without_captions_says_so_once_and_records_it(uncaptioned_dataset, captioned_dataset,
                                                                           tmp_path, capsys):
    """eval.py on a NEXT checkpoint (the old fixture: eval.py serves it too) with a dataset without captions: one
    note, and the report's "captions" says the model ran without text; with captions it says they were used; an
    image-only model reads none."""
    checks = [(OLD / "next", uncaptioned_dataset, "absent from the dataset: evaluated without text"),
              (OLD / "next", captioned_dataset, "used"), (OLD / "demo", uncaptioned_dataset, None)]
    for i, (checkpoint, dataset, expected) in enumerate(checks):
        capsys.readouterr()
        assert eval_script.main(["--model", str(checkpoint), "--dataset", dataset, "--output", str(tmp_path / str(i)),
                                 "--no-progress", "--no-complexity"]) == 0
        notes = [line for line in capsys.readouterr().err.splitlines() if "has no captions" in line]
        assert len(notes) == (1 if expected and expected != "used" else 0), notes
        report = json.loads((tmp_path / str(i) / "eval_results.json").read_text())
        assert report["captions"] == expected


def test_a_new_next_checkpoint_ships_the_family_files_and_not_demos(captioned_dataset, tmp_path):
    out = tmp_path / "next"
    train.main([*tiny_train_args("next"), "--dataset", captioned_dataset, "--output-dir", str(out), "--max-steps",
                "1", "--num-identities", "2", "--num-instances", "2", "--save-strategy", "no"])
    code = {p.name for p in out.iterdir() if p.suffix == ".py"}
    assert code == {"configuration_reid.py", "modeling_reid.py", "configuration_next.py", "modeling_next.py",
                    "image_processing_reid.py", "processing_reid.py", "pipeline_reid.py"}
