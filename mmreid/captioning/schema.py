"""Attribute schemas: what the models are asked about, which values are allowed, and where
each attribute may come from.

The attribute names and value sets follow the slots of the NEXT release's caption template
(its files still show placeholders such as ``[upper_clothing_color]`` or ``[tires_type]``
where a slot was left empty), so the rendered captions keep the released sentence structure.

Two rules of the pipeline live here as data, once:

* ``sources``: the modalities whose images may give a value.  Colours come from RGB only
  (NIR and TIR images carry no colour); time of day and lighting are not read from TIR.
* ``per_image``: properties of one image rather than of the object (lighting, clarity): they
  are merged across models but not across modalities, and each modality's caption shows its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from ..data.builder import MODALITIES

KINDS = ("person", "vehicle")
COLOR_SOURCES = ("rgb",)  # NIR and TIR images show no colour
LIGHT_SOURCES = ("rgb", "nir")  # the released TIR captions carry no time of day or lighting

COLORS = (
    "black", "white", "gray", "silver", "red", "blue", "green", "yellow", "orange",
    "purple", "pink", "brown", "beige", "gold", "dark", "light",
)
COLOR_SYNONYMS = {
    "grey": "gray", "navy": "blue", "maroon": "red", "burgundy": "red", "khaki": "beige",
    "tan": "beige", "cream": "beige", "violet": "purple", "golden": "gold",
}


@dataclass(frozen=True)
class Attribute:
    """One attribute asked of the models.

    ``values``: the allowed (canonical) values, or ``None`` for an open vocabulary (brand).
    ``synonyms``: lower-case answer phrase -> canonical value.  ``label``: the noun that the
    renderer uses when the value is unknown ("a t-shirt of unknown color").  ``negative``: the
    value that answers such as "none" or "no" stand for (absence), if the attribute has one.
    """

    name: str
    question: str
    label: str
    values: Optional[tuple[str, ...]]
    synonyms: Mapping[str, str] = field(default_factory=dict)
    sources: tuple[str, ...] = MODALITIES
    per_image: bool = False
    negative: Optional[str] = None
    hint: str = ""


@dataclass(frozen=True)
class Schema:
    kind: str
    noun: str
    attributes: tuple[Attribute, ...]

    def __getitem__(self, name: str) -> Attribute:
        for attr in self.attributes:
            if attr.name == name:
                return attr
        raise KeyError(name)

    def asked_in(self, modality: str) -> tuple[Attribute, ...]:
        """The attributes a model is asked about for an image of ``modality``, in prompt order."""
        return tuple(a for a in self.attributes if modality in a.sources)


def _clarity() -> Attribute:
    return Attribute("clarity", "Image clarity", "clarity", ("clear", "blurry"),
                     {"blurred": "blurry", "blur": "blurry", "fuzzy": "blurry", "low resolution": "blurry",
                      "sharp": "clear", "high resolution": "clear"}, per_image=True)


def _lighting() -> Attribute:
    return Attribute("lighting", "Lighting", "brightness", ("bright", "normal", "dim"),
                     {"dark": "dim", "low": "dim", "low light": "dim", "moderate": "normal", "medium": "normal"},
                     sources=LIGHT_SOURCES, per_image=True)


def _time() -> Attribute:
    return Attribute("time", "Time of day", "time of day", ("daytime", "nighttime"),
                     {"day": "daytime", "daylight": "daytime", "night": "nighttime", "evening": "nighttime",
                      "night time": "nighttime", "day time": "daytime"}, sources=LIGHT_SOURCES)


def _color(name: str, question: str) -> Attribute:
    return Attribute(name, question, "color", COLORS, COLOR_SYNONYMS, sources=COLOR_SOURCES)


PERSON = Schema("person", "person", (
    Attribute("age", "Age", "age", ("child", "teenager", "adult", "senior"),
              {"kid": "child", "teen": "teenager", "young adult": "adult", "middle-aged": "adult",
               "middle aged": "adult", "elderly": "senior", "old": "senior"}),
    Attribute("gender", "Gender", "gender", ("male", "female"),
              {"man": "male", "boy": "male", "men": "male", "woman": "female", "girl": "female",
               "lady": "female", "women": "female"}),
    Attribute("view", "Viewpoint", "viewpoint", ("front", "back", "side"),
              {"rear": "back", "behind": "back", "frontal": "front", "profile": "side"}),
    _time(),
    _lighting(),
    Attribute("upper_clothing", "Upper clothing", "type",
              ("t-shirt", "shirt", "jacket", "coat", "sweater", "hoodie", "vest", "blouse", "tank top", "dress"),
              {"tshirt": "t-shirt", "t shirt": "t-shirt", "tee": "t-shirt", "jumper": "sweater",
               "pullover": "sweater", "cardigan": "sweater", "sweatshirt": "hoodie", "parka": "coat"}),
    _color("upper_clothing_color", "Upper clothing color"),
    Attribute("lower_clothing", "Lower clothing", "type",
              ("trousers", "jeans", "shorts", "skirt", "dress", "leggings"),
              {"pants": "trousers", "slacks": "trousers", "denim": "jeans"}),
    _color("lower_clothing_color", "Lower clothing color"),
    Attribute("footwear", "Footwear", "type",
              ("casual sneakers", "athletic sneakers", "casual shoes", "formal shoes", "boots", "sandals",
               "high heels", "slippers"),
              {"sneakers": "casual sneakers", "trainers": "casual sneakers", "running shoes": "athletic sneakers",
               "sports shoes": "athletic sneakers", "shoes": "casual shoes", "leather shoes": "formal shoes",
               "heels": "high heels", "flip-flops": "sandals", "flip flops": "sandals"}),
    Attribute("hair_length", "Hair length", "length", ("short", "medium", "long"),
              {"shoulder-length": "medium", "shoulder length": "medium", "bald": "short"}),
    Attribute("hair_style", "Hair style", "style", ("straight", "curly", "wavy", "tied"),
              {"ponytail": "tied", "bun": "tied", "braided": "tied", "tied up": "tied", "tied back": "tied"}),
    Attribute("glasses", "Wearing glasses", "glasses", ("yes", "no"),
              {"glasses": "yes", "sunglasses": "yes", "spectacles": "yes", "true": "yes", "wearing glasses": "yes",
               "false": "no"}, negative="no"),
    Attribute("carrying", "Carried item", "item",
              ("backpack", "handbag", "shoulder bag", "bag", "suitcase", "phone", "bottle", "umbrella", "book",
               "nothing"),
              {"rucksack": "backpack", "purse": "handbag", "luggage": "suitcase", "trolley": "suitcase",
               "cellphone": "phone", "mobile phone": "phone", "smartphone": "phone"}, negative="nothing"),
    _clarity(),
))


_SHAPES = ("angular", "rectangular", "oval", "round")
_PRESENT = ("present", "not present")
_PRESENT_SYNONYMS = {"yes": "present", "visible": "present", "true": "present", "absent": "not present",
                     "false": "not present"}

VEHICLE = Schema("vehicle", "vehicle", (
    _color("color", "Body color"),
    Attribute("brand", "Brand", "brand", None, hint="the make, e.g. Volkswagen, Toyota, Honda"),
    Attribute("vehicle_type", "Vehicle type", "type",
              ("sedan", "SUV", "hatchback", "minivan", "van", "truck", "coupe", "convertible", "wagon", "bus"),
              {"saloon": "sedan", "car": "sedan", "crossover": "SUV", "mpv": "minivan", "pickup": "truck",
               "pickup truck": "truck", "lorry": "truck", "estate": "wagon", "station wagon": "wagon"}),
    Attribute("view", "Viewpoint", "viewpoint", ("front", "back", "side", "diagonal"),
              {"rear": "back", "behind": "back", "frontal": "front", "profile": "side", "oblique": "diagonal",
               "three-quarter": "diagonal", "front-side": "diagonal", "angled": "diagonal"}),
    _lighting(),
    _time(),
    _clarity(),
    Attribute("exterior_condition", "Exterior condition", "condition", ("new", "used", "worn", "damaged"),
              {"good": "used", "old": "worn", "scratched": "worn", "dented": "damaged"}),
    Attribute("window_condition", "Window tint", "tint", ("tinted", "clear", "dirty"),
              {"dark": "tinted", "transparent": "clear"}),
    Attribute("window_style", "Window shape", "shape", ("flat", "curved", "panoramic")),
    Attribute("headlights_condition", "Headlights on or off", "state", ("on", "off"),
              {"lit": "on", "illuminated": "on", "unlit": "off"}),
    Attribute("headlights_shape", "Headlight shape", "shape", _SHAPES, {"ovular": "oval", "rounded": "round"}),
    Attribute("taillights_shape", "Taillight shape", "shape", _SHAPES, {"ovular": "oval", "rounded": "round"}),
    Attribute("front_grille_shape", "Front grille shape", "shape",
              ("horizontal", "vertical", "hexagonal", "mesh", "angular"), {"honeycomb": "mesh"}),
    Attribute("front_grille_edges", "Front grille edges", "shape", ("rounded", "sharp", "straight")),
    Attribute("roof_condition", "Roof condition", "condition", ("clean", "dirty", "damaged")),
    Attribute("roof_type", "Roof type", "shape", ("sloped", "flat", "sunroof"),
              {"panoramic": "sunroof", "moonroof": "sunroof"}),
    Attribute("tires_condition", "Tire condition", "condition", ("new", "used", "worn")),
    Attribute("tire_size", "Tire size", "size", ("small", "medium", "large")),
    Attribute("tires_type", "Tire type", "type", ("regular", "street", "sport", "all-terrain", "off-road"),
              {"standard": "regular", "all terrain": "all-terrain", "off road": "off-road"}),
    Attribute("bumper_condition", "Bumper condition", "condition", ("intact", "damaged"),
              {"good": "intact", "undamaged": "intact", "dented": "damaged", "scratched": "damaged"}),
    Attribute("side_mirror_condition", "Side mirror condition", "condition", ("intact", "damaged", "folded"),
              {"good": "intact", "undamaged": "intact"}),
    Attribute("license_plate", "License plate", "visibility", ("visible", "not visible"),
              {"yes": "visible", "readable": "visible", "hidden": "not visible", "covered": "not visible",
               "obscured": "not visible"}, negative="not visible"),
    Attribute("spoiler", "Spoiler", "presence", _PRESENT, _PRESENT_SYNONYMS, negative="not present"),
    Attribute("roof_rack", "Roof rack", "presence", _PRESENT, _PRESENT_SYNONYMS, negative="not present"),
    Attribute("exhaust_type", "Exhaust pipes", "type", ("hidden", "single", "dual", "quad"),
              {"double": "dual", "twin": "dual", "concealed": "hidden", "not visible": "hidden", "four": "quad"}),
))

SCHEMAS: dict[str, Schema] = {"person": PERSON, "vehicle": VEHICLE}


def get_schema(kind: str) -> Schema:
    if kind not in SCHEMAS:
        raise ValueError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    return SCHEMAS[kind]
