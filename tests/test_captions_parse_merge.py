"""The attribute parser and the merger on recorded model answers: well-formed, malformed, empty."""

import pytest

from mmreid.captioning.merge import Answer, merge_answers
from mmreid.captioning.parser import DEFAULT_CONFIDENCE, Observation, parse_answer
from mmreid.captioning.prompts import attribute_prompt
from mmreid.captioning.schema import PERSON, VEHICLE


def _values(parsed):
    return {k: (o.value, o.confidence) for k, o in parsed.items()}


# ----------------------------------------------------------------------------- recorded answers

WELL_FORMED = """1. Age: adult, confidence: 0.8
2. Gender: male, confidence: 0.7
3. Viewpoint: back, confidence: 0.9
4. Time of day: nighttime, confidence: 0.85
5. Lighting: dim, confidence: 0.8
6. Upper clothing: jacket, confidence: 0.75
7. Upper clothing color: black, confidence: 0.6
8. Lower clothing: trousers, confidence: 0.7
9. Lower clothing color: dark blue, confidence: 0.55
10. Footwear: sneakers, confidence: 0.5
11. Hair length: short, confidence: 0.8
12. Hair style: straight, confidence: 0.6
13. Wearing glasses: no, confidence: 0.7
14. Carried item: backpack, confidence: 0.9
15. Image clarity: blurry, confidence: 0.95"""

# The shapes seen from chat models: markdown, one-line lists, percentages, words, JSON in a fence.
MARKDOWN = """Sure! Here is the analysis:

- **Age**: Adult (confidence: 90%)
- **Gender**: Female — confidence high
* Upper garment: a long grey coat, conf=0.65
* Lower garment colour: Black.
Carried items: none (0.8)
Glasses: not wearing any, confidence: 0.6
Hair length: shoulder-length, confidence: 0.7"""

ONE_LINE = "Age: adult, confidence: 0.8 / Gender: male, confidence: 0.7 / Carrying: backpack, confidence: 0.9"

JSON_FENCE = """```json
{"age": {"value": "teen", "confidence": 0.6},
 "gender": "woman (0.9)",
 "viewpoint": ["rear", 0.7],
 "footwear": {"value": "running shoes", "confidence": "high"}}
```"""

NUMBERS_ONLY = "1. adult, confidence: 0.8\n2. female (0.9)\n3) side, confidence: 0.4"

MALFORMED = """Age adult 0.8
Gender: ???, confidence: 0.9
Viewpoint: upside down, confidence: 0.9
Upper clothing: a cape with many colours, confidence: 1.7
Lower clothing: unknown, confidence: 0.9
Hair style: not curly, confidence: 0.8
Carried item: backpack, confidence: banana
Lighting:
: adult
Attributes: 12
confidence: 0.5"""

FREE_TEXT = "The image shows a young man in a red jacket walking away from the camera at night."


def test_well_formed_answer_reads_every_attribute():
    got = _values(parse_answer(WELL_FORMED, PERSON, "rgb"))
    assert got == {
        "age": ("adult", 0.8), "gender": ("male", 0.7), "view": ("back", 0.9), "time": ("nighttime", 0.85),
        "lighting": ("dim", 0.8), "upper_clothing": ("jacket", 0.75), "upper_clothing_color": ("black", 0.6),
        "lower_clothing": ("trousers", 0.7), "lower_clothing_color": ("blue", 0.55),
        "footwear": ("casual sneakers", 0.5), "hair_length": ("short", 0.8), "hair_style": ("straight", 0.6),
        "glasses": ("no", 0.7), "carrying": ("backpack", 0.9), "clarity": ("blurry", 0.95),
    }


def test_markdown_percentages_words_and_synonyms():
    got = _values(parse_answer(MARKDOWN, PERSON, "rgb"))
    assert got == {
        "age": ("adult", 0.9),
        "gender": ("female", 0.85),
        "upper_clothing": ("coat", 0.65),
        "lower_clothing_color": ("black", DEFAULT_CONFIDENCE),
        "carrying": ("nothing", 0.8),
        "glasses": ("no", 0.6),
        "hair_length": ("medium", 0.7),
    }


def test_one_line_answer_of_the_paper_figure():
    assert _values(parse_answer(ONE_LINE, PERSON, "nir")) == {
        "age": ("adult", 0.8), "gender": ("male", 0.7), "carrying": ("backpack", 0.9)}


def test_json_answer_in_a_code_fence():
    assert _values(parse_answer(JSON_FENCE, PERSON, "rgb")) == {
        "age": ("teenager", 0.6), "gender": ("female", 0.9), "view": ("back", 0.7),
        "footwear": ("athletic sneakers", 0.85)}


def test_lines_without_names_follow_the_prompt_numbering():
    prompt = attribute_prompt(PERSON, "tir")
    assert "1. Age (child, teenager, adult, senior)" in prompt
    assert "2. Gender (male, female)" in prompt and "3. Viewpoint (front, back, side)" in prompt
    assert _values(parse_answer(NUMBERS_ONLY, PERSON, "tir")) == {
        "age": ("adult", 0.8), "gender": ("female", 0.9), "view": ("side", 0.4)}


def test_malformed_answer_maps_what_it_cannot_read_to_unknown():
    got = _values(parse_answer(MALFORMED, PERSON, "rgb"))
    assert got == {
        "gender": (None, 0.9),
        "view": (None, 0.9),  # outside the schema
        "upper_clothing": (None, DEFAULT_CONFIDENCE),  # no allowed value in it; 1.7 is no confidence
        "lower_clothing": (None, 0.9),
        "hair_style": (None, 0.8),  # a negated value of an attribute without an "absent" value
        "carrying": ("backpack", DEFAULT_CONFIDENCE),
        "lighting": (None, DEFAULT_CONFIDENCE),
    }


@pytest.mark.parametrize("answer", ["", "   \n", None, 42, b"bytes", ["Age: adult"], FREE_TEXT, "\x00\xff" * 50])
def test_empty_or_unusable_answers_give_nothing_and_never_raise(answer):
    assert parse_answer(answer, PERSON, "rgb") == {}


def test_vehicle_answer_open_brand_and_absence_values():
    answer = ("Body colour: Silver\nBrand: volkswagen, confidence: 0.9\nVehicle type: suv (0.8)\n"
              "License plate: not visible\nSpoiler: no, confidence: 0.7\nRoof rack: Yes (60%)\n"
              "Exhaust pipes: twin pipes, 0.6\nBrand: I cannot tell, confidence: 0.95")
    assert _values(parse_answer(answer, VEHICLE, "rgb")) == {
        "color": ("silver", DEFAULT_CONFIDENCE), "brand": ("Volkswagen", 0.9), "vehicle_type": ("SUV", 0.8),
        "license_plate": ("not visible", DEFAULT_CONFIDENCE), "spoiler": ("not present", 0.7),
        "roof_rack": ("present", 0.6), "exhaust_type": ("dual", 0.6)}


# ----------------------------------------------------------------------------- merging


def _answer(modality, model, **obs):
    return Answer(modality, model, {k: Observation(*v) for k, v in obs.items()})


def test_merge_keeps_the_most_confident_known_value_across_modalities_and_models():
    answers = [
        _answer("rgb", "a", gender=("female", 0.6), age=(None, 0.99), view=("side", 0.7)),
        _answer("nir", "a", gender=("male", 0.8), age=("adult", 0.55)),
        _answer("tir", "a", gender=("male", 0.7), view=("back", 0.7)),
        _answer("rgb", "b", gender=("female", 0.75), age=("child", 0.4), view=("front", 0.7)),
    ]
    merged = merge_answers(PERSON, answers, ["a", "b"], min_confidence=0.5)
    assert (merged.objects["gender"].value, merged.objects["gender"].modality) == ("male", "nir")
    assert (merged.objects["age"].value, merged.objects["age"].confidence) == ("adult", 0.55)  # 0.4 < threshold
    # equal confidence: the earlier modality (RGB), then the earlier model wins
    assert (merged.objects["view"].value, merged.objects["view"].model) == ("side", "a")
    assert merged.objects["hair_style"] is None


def test_colours_never_come_from_nir_or_tir_and_light_not_from_tir():
    answers = [
        _answer("rgb", "a", upper_clothing_color=("red", 0.55), time=("daytime", 0.6)),
        _answer("nir", "a", upper_clothing_color=("white", 0.99), lower_clothing_color=("black", 0.9)),
        _answer("tir", "a", upper_clothing_color=("blue", 0.99), time=("nighttime", 0.99), lighting=("dim", 0.9)),
    ]
    merged = merge_answers(PERSON, answers, ["a"])
    assert merged.objects["upper_clothing_color"].value == "red"
    assert merged.objects["lower_clothing_color"] is None
    assert merged.objects["time"].value == "daytime"
    assert "tir" not in merged.images or "lighting" not in merged.images["tir"]


def test_per_image_attributes_stay_with_their_modality():
    answers = [
        _answer("rgb", "a", clarity=("blurry", 0.9), lighting=("dim", 0.6)),
        _answer("nir", "a", clarity=("clear", 0.6), lighting=("bright", 0.7)),
        _answer("nir", "b", clarity=("blurry", 0.55)),
        _answer("tir", "a", clarity=("clear", 0.3)),
    ]
    merged = merge_answers(PERSON, answers, ["a", "b"], min_confidence=0.5)
    assert merged.values_for("rgb")["clarity"] == "blurry" and merged.values_for("rgb")["lighting"] == "dim"
    assert merged.values_for("nir")["clarity"] == "clear" and merged.values_for("nir")["lighting"] == "bright"
    assert merged.values_for("tir")["clarity"] is None  # below the threshold
    assert "lighting" not in merged.values_for("tir")
    assert set(merged.unknown_names()) >= {"age", "clarity"}


def test_merge_does_not_depend_on_answer_order():
    answers = [_answer("rgb", "a", age=("adult", 0.7)), _answer("nir", "b", age=("child", 0.7)),
               _answer("tir", "a", age=("senior", 0.7)), _answer("rgb", "b", age=("teenager", 0.7))]
    first = merge_answers(PERSON, answers, ["a", "b"]).objects["age"]
    assert first.value == "adult"
    assert merge_answers(PERSON, answers[::-1], ["a", "b"]).objects["age"] == first


def test_merging_parsed_recorded_answers_end_to_end():
    rgb = parse_answer(WELL_FORMED, PERSON, "rgb")
    nir = parse_answer("Gender: female, confidence: 0.95\nUpper clothing color: white, confidence: 1.0\n"
                       "Carried item: nothing visible, confidence: 0.99", PERSON, "nir")
    tir = parse_answer("", PERSON, "tir")
    merged = merge_answers(PERSON, [Answer("rgb", "m", rgb), Answer("nir", "m", nir), Answer("tir", "m", tir)], ["m"])
    values = merged.values_for("rgb")
    assert values["gender"] == "female" and values["upper_clothing_color"] == "black"
    assert values["carrying"] == "nothing"  # "nothing visible" (0.99) beats RGB's backpack (0.9)
    assert merged.values_for("tir")["clarity"] is None and values["clarity"] == "blurry"
