"""The deterministic caption templates, one per kind and modality.

The sentences follow the released NEXT captions ("An adult male seen from the side during
nighttime in dim lighting. He is wearing a white t-shirt with black trousers, paired with
casual sneakers. ...", "A white Volkswagen sedan viewed from the front in dim nighttime light
(image appears blurry). The vehicle shows used wear with tinted curved windows. ..."):
NIR and TIR captions show no colours, and TIR captions no time of day or lighting
(``Attribute.sources`` decides).  An unknown attribute is written with the word "unknown"
("a t-shirt of unknown color", "seen from an unknown viewpoint"), so a caption counts as
unknown in the statistics exactly when one of the attributes it shows is unknown.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from .schema import Schema, get_schema

TEMPLATE_VERSION = 1
Values = Mapping[str, Optional[str]]

_NO_ARTICLE_HEADS = {"footwear"}  # mass nouns; plural heads (trousers, sneakers) take none either
_VERB_OF_ITEM = {"suitcase": "dragging", "phone": "holding", "bottle": "holding", "umbrella": "holding",
                 "book": "holding"}


def indefinite(phrase: str) -> str:
    """``a``/``an`` + phrase, or the phrase alone for plural and mass nouns ("black trousers")."""
    head = phrase.split(" of unknown ")[0].split()[-1]
    if head in _NO_ARTICLE_HEADS or (head.endswith("s") and not head.endswith("ss")):
        return phrase
    first = phrase.lower()
    vowel = first[:1] in "aeiou" and not first.startswith(("use", "uni", "eu", "one"))
    word = phrase.split()[0]
    if word.isupper() and len(word) > 1:  # acronyms are read letter by letter: "an SUV"
        vowel = word[0] in "AEFHILMNORSX"
    return ("an " if vowel else "a ") + phrase


def _join_and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def noun_phrase(modifiers: Sequence[tuple[str, Optional[str]]], head: Optional[str], generic: str,
                head_label: Optional[str] = None) -> str:
    """Known modifiers + head, then "of unknown <labels>" for what is unknown.

    ``modifiers``: (label, value) pairs; ``head``: the head noun's value, or None to use
    ``generic`` ("upper garment") and add ``head_label`` to the unknown list.
    """
    words = [value for _, value in modifiers if value is not None] + [head if head is not None else generic]
    unknown = [label for label, value in modifiers if value is None]
    if head is None and head_label:
        unknown.append(head_label)
    unknown = list(dict.fromkeys(unknown))
    return " ".join(words) + (f" of unknown {_join_and(unknown)}" if unknown else "")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _shows(schema: Schema, modality: str, name: str) -> bool:
    return modality in schema[name].sources


# ----------------------------------------------------------------------------- persons


def _person(schema: Schema, modality: str, v: Values) -> str:
    def get(name):  # attributes the modality does not show are left out, not unknown
        return v.get(name) if _shows(schema, modality, name) else None

    colors = _shows(schema, modality, "upper_clothing_color")
    subject = indefinite(noun_phrase([("age", v.get("age"))], v.get("gender"), "person", "gender"))
    view = f"seen from the {v['view']}" if v.get("view") else "seen from an unknown viewpoint"
    scene = ""
    if _shows(schema, modality, "time"):
        scene = f" during {v['time']}" if get("time") else " at an unknown time of day"
        scene += f" in {get('lighting')} lighting" if get("lighting") else " in unknown lighting"
    pronoun = {"male": "he", "female": "she"}.get(v.get("gender") or "", "the person")

    upper_mods = [("color", get("upper_clothing_color"))] if colors else []
    lower_mods = [("color", get("lower_clothing_color"))] if colors else []
    upper = indefinite(noun_phrase(upper_mods, v.get("upper_clothing"), "upper garment", "type"))
    lower = indefinite(noun_phrase(lower_mods, v.get("lower_clothing"), "lower garment", "type"))
    footwear = noun_phrase([], v.get("footwear"), "footwear", "type")

    hair = noun_phrase([("length", v.get("hair_length")), ("style", v.get("hair_style"))], "hair", "hair")
    glasses = {"yes": f"{pronoun} is wearing glasses", "no": f"{pronoun} is not wearing glasses"}.get(
        v.get("glasses") or "", f"it is unknown whether {pronoun} wears glasses")

    item = v.get("carrying")
    if item is None:
        carrying = f"It is unknown whether {pronoun} is carrying anything."
    elif item == "nothing":
        carrying = f"{_cap(pronoun)} is not carrying anything."
    else:
        carrying = f"{_cap(pronoun)} is {_VERB_OF_ITEM.get(item, 'carrying')} {indefinite(item)}."
    clarity = f"The image appears {v['clarity']}." if v.get("clarity") else "The image clarity is unknown."

    return " ".join([
        f"{_cap(subject)} {view}{scene}.",
        f"{_cap(pronoun)} is wearing {upper} with {lower}, paired with {footwear}.",
        f"{_cap(hair)} and {glasses}.",
        carrying,
        clarity,
    ])


# ----------------------------------------------------------------------------- vehicles

_VEHICLE_STATEMENTS = (  # attribute, known sentence, unknown sentence
    ("side_mirror_condition", "Side mirrors are {}.", "Side mirror condition is unknown."),
    ("license_plate", "License plate is {}.", "License plate visibility is unknown."),
    ("spoiler", "Spoiler is {}.", "Spoiler presence is unknown."),
    ("roof_rack", "Roof rack is {}.", "Roof rack presence is unknown."),
    ("exhaust_type", "Exhaust system features {} pipes.", "Exhaust pipe type is unknown."),
)


def _vehicle(schema: Schema, modality: str, v: Values) -> str:
    def get(name):
        return v.get(name) if _shows(schema, modality, name) else None

    mods = ([("color", get("color"))] if _shows(schema, modality, "color") else []) + [("brand", v.get("brand"))]
    subject = indefinite(noun_phrase(mods, v.get("vehicle_type"), "vehicle", "type"))
    view = f"viewed from the {v['view']}" if v.get("view") else "viewed from an unknown viewpoint"
    scene = ""
    if _shows(schema, modality, "lighting"):
        scene = " in " + noun_phrase([("brightness", get("lighting")), ("time of day", get("time"))], "light", "light")
    clarity = f"(image appears {v['clarity']})" if v.get("clarity") else "(image clarity unknown)"

    wear = noun_phrase([("condition", v.get("exterior_condition"))], "wear", "wear")
    windows = noun_phrase([("tint", v.get("window_condition")), ("shape", v.get("window_style"))], "windows", "windows")
    headlights = noun_phrase([("state", v.get("headlights_condition")), ("shape", v.get("headlights_shape"))],
                             "headlights", "headlights")
    taillights = noun_phrase([("shape", v.get("taillights_shape"))], "taillights", "taillights")
    grille = indefinite(noun_phrase([("shape", v.get("front_grille_shape"))], "grille", "grille"))
    edges = noun_phrase([("shape", v.get("front_grille_edges"))], "edges", "edges")
    roof = noun_phrase([("condition", v.get("roof_condition")), ("shape", v.get("roof_type"))], "roof", "roof")
    tires = noun_phrase([("condition", v.get("tires_condition")), ("size", v.get("tire_size")),
                         ("type", v.get("tires_type"))], "tires", "tires")
    bumpers = noun_phrase([("condition", v.get("bumper_condition"))], "bumpers", "bumpers")

    sentences = [
        f"{_cap(subject)} {view}{scene} {clarity}.",
        f"The vehicle shows {wear} with {windows}.",
        f"It features {headlights} and {taillights}, complemented by {grille} with {edges}.",
        f"The {roof} sits above {tires} with {bumpers}.",
    ]
    for name, known, unknown in _VEHICLE_STATEMENTS:
        sentences.append(known.format(v[name]) if v.get(name) else unknown)
    return " ".join(sentences)


_RENDERERS = {"person": _person, "vehicle": _vehicle}


def render_caption(kind: str, modality: str, values: Values) -> str:
    """The caption of one modality image from merged ``{attribute: value or None}``."""
    schema = get_schema(kind)
    return _RENDERERS[kind](schema, modality, values)
