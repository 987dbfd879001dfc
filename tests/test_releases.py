"""Every registered dataset release is complete: layout, file-name parser, splits, protocol, citation, preset and
synthetic naming, and a synthetic copy of it builds through the real builder into what its record promises."""

import sys
from pathlib import Path

import pytest

from mmreid.data.builder import build_dataset
from mmreid.data.release import KINDS, PROTOCOLS, SPLITS, Release
from mmreid.data.releases import RELEASES, get_release, release_names
from mmreid.data.synthetic import SYNTHETIC_LAYOUTS, make_synthetic
from mmreid.evaluation.protocol import choose_protocol
from mmreid.hub.dataset_card import make_dataset_card
from mmreid.training.arguments import PRESETS_DIR, parse_args

SMALL = dict(num_train_ids=4, num_test_ids=4, images_per_id=4, image_size=(16, 8))


def test_the_registry_holds_the_four_public_releases_once():
    assert sorted(RELEASES) == ["MSVR310", "RGBNT100", "RGBNT201", "WMVEID863"]
    assert get_release("msvwild863") is RELEASES["WMVEID863"] and "MSVWild863" in release_names()
    assert SYNTHETIC_LAYOUTS == tuple(RELEASES)  # the generator writes every registered release


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_each_release_has_every_part(name, tmp_path):
    release = RELEASES[name]
    assert isinstance(release, Release) and release.name == name
    assert release.kind in KINDS and release.protocol in PROTOCOLS
    assert tuple(release.split_dirs) == SPLITS and all(release.split_dirs.values()) and release.folders
    assert release.modality_dirs is None or len(set(release.modality_dirs)) == 3
    source = release.source
    assert source.summary and source.paper and source.bibtex.count("@") == 1 and "http" not in source.bibtex
    preset = PRESETS_DIR / f"{release.preset}.yaml"
    assert preset.is_file(), f"{name}: no preset {preset}"
    run = parse_args(["--preset", release.preset, "--output-dir", str(tmp_path / "run")])
    assert run.script.preset == release.preset and len(run.script.image_size) == 2
    naming = release.synthetic
    assert naming.train_cams and naming.test_cams and len(naming.default_size) == 2
    # the synthetic names are names of the release: its own parser reads them back
    parsed = release.parse_name(naming.file_name(17, naming.test_cams[-1], 5 if naming.with_scenes else -1, 3, 1))
    assert parsed.pid == 17 and parsed.camid >= 0


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_a_synthetic_copy_builds_through_the_real_builder(name, tmp_path):
    release = RELEASES[name]
    root = make_synthetic(name, tmp_path / "raw", seed=2, **SMALL)
    assert root.relative_to(tmp_path / "raw") == Path(release.folders[0].split("/")[0])
    dsd = build_dataset(name, tmp_path / "raw", captions_dir=root / "captions", cache_dir=tmp_path / "cache")
    assert list(dsd) == list(SPLITS)
    assert len(set(dsd["train"]["pid"])) == SMALL["num_train_ids"]
    assert len(set(dsd["query"]["pid"]) | set(dsd["gallery"]["pid"])) == SMALL["num_test_ids"]
    cams = {c - min(release.synthetic.train_cams) for c in release.synthetic.train_cams}  # 0-based, as stored
    assert set(dsd["train"]["camid"]) <= cams
    # the protocol evaluation picks from the scene ids is the one the record names
    assert choose_protocol(dsd["query"]["sceneid"], dsd["gallery"]["sceneid"]) == release.protocol
    card = make_dataset_card(dsd, name)
    assert release.source.bibtex in card.text and f"{release.protocol} protocol" in card.text
    assert f"{release.kind}-re-identification" in card.data.tags


def test_the_wmveid863_preset_is_msvr310s_recipe_and_says_so(tmp_path):
    """The authors ship no WMVEID863 recipe: ours copies MSVR310's (the closest release), value for value, and its
    file marks every value as ours."""
    ours = parse_args(["--preset", "wmveid863", "--output-dir", str(tmp_path)])
    msvr = parse_args(["--preset", "msvr310", "--output-dir", str(tmp_path)])
    assert (ours.script.image_size, ours.script.backbone, ours.model_options, ours.loss, ours.augment) == \
        (msvr.script.image_size, msvr.script.backbone, msvr.model_options, msvr.loss, msvr.augment)
    assert ours.training.to_dict() == msvr.training.to_dict()
    text = (PRESETS_DIR / "wmveid863.yaml").read_text()
    values = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
              and not line.rstrip().endswith(":")]
    assert "OURS, NOT THE AUTHORS'" in text and all("# ours" in line for line in values), values


def test_a_new_release_is_one_module_found_without_other_edits(tmp_path, monkeypatch):
    """A module dropped into the package (here: a folder added to its search path) is registered as it is; a module
    without a RELEASE, or one reusing a registered name, is refused naming the module."""
    import mmreid.data.releases as package

    (tmp_path / "toy100.py").write_text(
        (Path(package.__file__).parent / "rgbnt100.py").read_text()
        .replace('name="RGBNT100"', 'name="TOY100"').replace('preset="rgbnt100"', 'preset="toy100"'))
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    found = package._discover()
    assert sorted(found) == sorted([*RELEASES, "TOY100"]) and found["TOY100"].kind == "vehicle"

    (tmp_path / "toy100.py").unlink()
    (tmp_path / "toy_none.py").write_text("RELEASE = None\n")
    with pytest.raises(TypeError, match=r"mmreid\.data\.releases\.toy_none defines no RELEASE"):
        package._discover()
    (tmp_path / "toy_none.py").unlink()
    (tmp_path / "toy_clash.py").write_text("from mmreid.data.releases.rgbnt201 import RELEASE\n")
    with pytest.raises(ValueError, match=r"toy_clash: the name\(s\) \['RGBNT201'\] are already registered"):
        package._discover()
    for name in ("toy100", "toy_none", "toy_clash"):  # leave no test module registered behind
        sys.modules.pop(f"mmreid.data.releases.{name}", None)
