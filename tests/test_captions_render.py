"""Template captions for fixed attributes, the rewrite check, and caption statistics.

Expected captions are written out by hand; the two full ones are released NEXT captions
(RGBNT201 test ``000273_cam1_0_02.jpg`` RGB, MSVR310 train ``0038_s014_v7_003.jpg`` RGB), so
the templates are checked against the released sentence structure, not against themselves.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmreid.captioning.render import render_caption
from mmreid.captioning.rewrite import check_rewrite, clean_rewrite
from mmreid.captioning.schema import PERSON, VEHICLE
from mmreid.captioning.stats import folder_stats, format_stats
from mmreid.data.builder import DatasetLayoutError

REPO = Path(__file__).resolve().parents[1]
REAL_CAPTIONS = REPO.parent / "shared" / "data" / "next_captions"

PERSON_ATTRS = dict(age="adult", gender="male", view="back", time="nighttime", lighting="dim",
                    upper_clothing="jacket", upper_clothing_color="black", lower_clothing="trousers",
                    lower_clothing_color="white", footwear="casual sneakers", hair_length="short",
                    hair_style="straight", glasses="no", carrying="backpack", clarity="blurry")

VEHICLE_ATTRS = dict(color="white", brand="Benz", vehicle_type="sedan", view="side", lighting="bright",
                     time="daytime", clarity="clear", exterior_condition="new", window_condition="tinted",
                     window_style="curved", headlights_condition="off", headlights_shape="oval",
                     taillights_shape="angular", front_grille_shape="horizontal", front_grille_edges="rounded",
                     roof_condition="clean", roof_type="sloped", tires_condition="new", tire_size="medium",
                     tires_type="street", bumper_condition="intact", side_mirror_condition="intact",
                     license_plate="visible", spoiler="not present", roof_rack="not present", exhaust_type="hidden")


def test_person_rgb_caption_equals_a_released_one():
    assert render_caption("person", "rgb", PERSON_ATTRS) == (
        "An adult male seen from the back during nighttime in dim lighting. He is wearing a black jacket with "
        "white trousers, paired with casual sneakers. Short straight hair and he is not wearing glasses. "
        "He is carrying a backpack. The image appears blurry.")


def test_person_nir_has_no_colours_and_tir_no_light():
    nir = dict(PERSON_ATTRS, lighting="bright", carrying="suitcase", glasses="yes", gender="female",
               lower_clothing="skirt")
    assert render_caption("person", "nir", nir) == (
        "An adult female seen from the back during nighttime in bright lighting. She is wearing a jacket with "
        "a skirt, paired with casual sneakers. Short straight hair and she is wearing glasses. "
        "She is dragging a suitcase. The image appears blurry.")
    assert render_caption("person", "tir", dict(PERSON_ATTRS, carrying="nothing", age="senior")) == (
        "A senior male seen from the back. He is wearing a jacket with trousers, paired with casual sneakers. "
        "Short straight hair and he is not wearing glasses. He is not carrying anything. The image appears blurry.")


def test_person_unknown_attributes_are_written_as_unknown():
    partial = dict(PERSON_ATTRS, age=None, upper_clothing_color=None, lower_clothing=None, hair_style=None,
                   glasses=None, carrying=None, lighting=None, gender=None)
    assert render_caption("person", "rgb", partial) == (
        "A person of unknown age and gender seen from the back during nighttime in unknown lighting. The person "
        "is wearing a jacket of unknown color with a white lower garment of unknown type, paired with casual "
        "sneakers. Short hair of unknown style and it is unknown whether the person wears glasses. It is "
        "unknown whether the person is carrying anything. The image appears blurry.")
    # what TIR does not show is not "unknown" there
    tir = render_caption("person", "tir", dict(PERSON_ATTRS, upper_clothing_color=None, time=None, lighting=None))
    assert "unknown" not in tir


def test_vehicle_rgb_caption_equals_a_released_one():
    assert render_caption("vehicle", "rgb", VEHICLE_ATTRS) == (
        "A white Benz sedan viewed from the side in bright daytime light (image appears clear). The vehicle shows "
        "new wear with tinted curved windows. It features off oval headlights and angular taillights, "
        "complemented by a horizontal grille with rounded edges. The clean sloped roof sits above new medium "
        "street tires with intact bumpers. Side mirrors are intact. License plate is visible. Spoiler is not "
        "present. Roof rack is not present. Exhaust system features hidden pipes.")


def test_vehicle_nir_and_tir_and_unknowns():
    nir = render_caption("vehicle", "nir", dict(VEHICLE_ATTRS, lighting="dim", time="nighttime"))
    assert nir.startswith("A Benz sedan viewed from the side in dim nighttime light (image appears clear). ")
    tir = render_caption("vehicle", "tir", dict(VEHICLE_ATTRS, brand=None, vehicle_type="SUV", spoiler=None,
                                                tires_condition=None, tire_size=None))
    assert tir == (
        "An SUV of unknown brand viewed from the side (image appears clear). The vehicle shows new wear with "
        "tinted curved windows. It features off oval headlights and angular taillights, complemented by a "
        "horizontal grille with rounded edges. The clean sloped roof sits above street tires of unknown "
        "condition and size with intact bumpers. Side mirrors are intact. License plate is visible. Spoiler "
        "presence is unknown. Roof rack is not present. Exhaust system features hidden pipes.")


def test_all_unknown_captions():
    assert render_caption("person", "tir", {}) == (
        "A person of unknown age and gender seen from an unknown viewpoint. The person is wearing an upper "
        "garment of unknown type with a lower garment of unknown type, paired with footwear of unknown type. "
        "Hair of unknown length and style and it is unknown whether the person wears glasses. It is unknown "
        "whether the person is carrying anything. The image clarity is unknown.")
    rgb = render_caption("vehicle", "rgb", {})
    assert rgb.startswith("A vehicle of unknown color, brand and type viewed from an unknown viewpoint in light "
                          "of unknown brightness and time of day (image clarity unknown). ")


# ----------------------------------------------------------------------------- rewrite check


def _shown(modality):
    return {a.name: PERSON_ATTRS.get(a.name) for a in PERSON.asked_in(modality)}


def test_rewrite_kept_when_faithful():
    template = render_caption("person", "rgb", PERSON_ATTRS)
    prose = ('"Seen from the back at nighttime in dim lighting, this adult male wears a black jacket and white '
             "trousers with casual sneakers. He has short straight hair, no glasses, and carries a backpack; "
             'the image is blurry."')
    assert check_rewrite(PERSON, "rgb", _shown("rgb"), template, clean_rewrite(prose)) == (True, "kept")


@pytest.mark.parametrize("prose,reason", [
    ("An adult male seen from the back at night in dim light wearing a black jacket and white trousers with "
     "casual sneakers, short straight hair, carrying a backpack. The image is blurry.", "drops time=nighttime"),
    ("An adult male seen from the back during nighttime in dim lighting, wearing a black jacket, white trousers, "
     "casual sneakers and a red cap, short straight hair, carrying a backpack. The image appears blurry.",
     "invents 'red'"),
    ("", "empty answer"),
    ("Sure! Here is a natural description that follows the template exactly as you asked me to. " * 6
     + "An adult male seen from the back during nighttime in dim lighting.", "too long"),
])
def test_rewrite_rejected_when_it_drops_or_invents(prose, reason):
    template = render_caption("person", "rgb", PERSON_ATTRS)
    assert check_rewrite(PERSON, "rgb", _shown("rgb"), template, prose) == (False, reason)


def test_rewrite_of_a_caption_with_nothing_known_is_refused():
    template = render_caption("person", "tir", {})
    assert check_rewrite(PERSON, "tir", {}, template, "A person.") == (False, "no known attribute")


def test_rewrite_may_not_bring_colours_into_nir():
    template = render_caption("person", "nir", PERSON_ATTRS)
    prose = ("An adult male seen from the back during nighttime in dim lighting, in a black jacket and trousers "
             "with casual sneakers; short straight hair; carrying a backpack; the image appears blurry.")
    assert check_rewrite(PERSON, "nir", _shown("nir"), template, prose) == (False, "invents 'black'")
    vehicle_nir = render_caption("vehicle", "nir", VEHICLE_ATTRS)
    shown = {a.name: VEHICLE_ATTRS.get(a.name) for a in VEHICLE.asked_in("nir")}
    assert check_rewrite(VEHICLE, "nir", shown, vehicle_nir, vehicle_nir) == (True, "kept")


# ----------------------------------------------------------------------------- statistics


def _write(folder: Path, name: str, captions: list[str]):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps([{"item": f"{i}.jpg", "description": c} for i, c in enumerate(captions)]))


def test_stats_counts_words_and_the_authors_unknown_words(tmp_path):
    _write(tmp_path, "train_RGB.json", ["He is carrying none.", "Nonetheless a clear image.", "Color UNKNOWN here"])
    _write(tmp_path, "test_RGB.json", ["Image appears unclear."])
    _write(tmp_path, "train_TI.json", ["one two", "three four five six"])
    stats = folder_stats(tmp_path)
    assert (stats.files["train_RGB.json"].captions, stats.files["train_RGB.json"].words) == (3, 11)
    assert stats.files["train_RGB.json"].unknown == 2  # "none", "UNKNOWN"; not "Nonetheless"
    rgb = stats.modalities["RGB"]
    assert (rgb.captions, rgb.unknown, rgb.words) == (4, 3, 14)
    assert rgb.unknown_rate == pytest.approx(75.0) and rgb.mean_words == pytest.approx(3.5)
    assert stats.modalities["TI"].unknown == 0 and "NI" not in stats.modalities
    assert (stats.overall.captions, stats.overall.words, stats.overall.unknown) == (6, 20, 3)
    table = format_stats(stats)
    assert "modality RGB" in table and "overall" in table and "75.00" in table


def test_stats_of_a_folder_without_caption_files(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"none of train_RGB.json.* found"):
        folder_stats(tmp_path)


@pytest.mark.skipif(not REAL_CAPTIONS.is_dir(), reason=f"{REAL_CAPTIONS} not present")
def test_stats_only_on_the_released_rgbnt201_captions_gives_the_papers_word_counts():
    res = subprocess.run([sys.executable, str(REPO / "data_scripts" / "generate_captions.py"),
                          "--stats-only", str(REAL_CAPTIONS / "201"), "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    # NEXT paper, Fig. 2(a): word counts RGB 201,934 / NIR 190,389 / TIR 167,144, total 559,467
    assert [stats["modalities"][t]["words"] for t in ("RGB", "NI", "TI")] == [201934, 190389, 167144]
    assert stats["overall"]["words"] == 559467
    assert [stats["modalities"][t]["captions"] for t in ("RGB", "NI", "TI")] == [4787, 4787, 4787]
    assert stats["files"]["train_RGB.json"]["captions"] == 3951


def test_stats_only_on_a_missing_folder_exits_2(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "data_scripts" / "generate_captions.py"),
                          "--stats-only", str(tmp_path / "nope")], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"generate_captions.py: error: caption folder {tmp_path / 'nope'}: does not exist"]
