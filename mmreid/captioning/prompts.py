"""Prompts: the attribute question per modality and schema, and the optional rewrite request.

The attribute prompt numbers the attributes in ``Schema.asked_in(modality)`` order; the parser
relies on that order for lines that carry a number but no attribute name.
"""

from __future__ import annotations

from typing import Mapping, Optional

from .schema import Schema

MODALITY_NAMES = {
    "rgb": "a visible-light (RGB) camera",
    "nir": "a near-infrared (NIR) camera; the image is grey-scale and shows no real colors",
    "tir": "a thermal-infrared (TIR) camera; brightness shows heat, not color or light",
}


def _choices(attr) -> str:
    if attr.values is None:
        return attr.hint or "free text, one or two words"
    return ", ".join(attr.values)


def attribute_prompt(schema: Schema, modality: str) -> str:
    """The step-1 question for one image: one ``attribute: value, confidence: x`` line each."""
    attrs = schema.asked_in(modality)
    lines = [
        "You are a visual analysis assistant specialized in processing images for "
        f"{schema.noun} re-identification.",
        f"The image shows one {schema.noun}, taken by {MODALITY_NAMES[modality]}.",
        "For every attribute below, give the value you see and your confidence from 0.0 (a guess) "
        "to 1.0 (certain). Use one of the listed values; write unknown when it cannot be seen.",
        "Answer with exactly one line per attribute and nothing else, in this form:",
        "<number>. <attribute>: <value>, confidence: <0.0 to 1.0>",
        "",
        "Attributes:",
    ]
    lines += [f"{i}. {a.question} ({_choices(a)})" for i, a in enumerate(attrs, 1)]
    return "\n".join(lines)


def rewrite_prompt(schema: Schema, modality: str, attributes: Mapping[str, Optional[str]], template: str) -> str:
    """The optional step-2 request: fluent prose from the merged attributes, nothing added."""
    known = [f"- {schema[name].question}: {value}" for name, value in attributes.items() if value is not None]
    return "\n".join([
        f"Generate a natural {schema.noun} appearance description for an image taken by "
        f"{MODALITY_NAMES[modality]}, by strictly following this template and using ONLY these attributes.",
        "Keep every attribute, add no other attribute, color or detail, and answer with the description only.",
        "",
        "Attributes:",
        *known,
        "",
        f"Template: {template}",
    ])
