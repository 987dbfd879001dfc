"""Checking an LLM rewrite of a rendered caption against the merged attributes.

A rewrite is kept only if it still shows every known value that the template shows and adds
no schema value (a colour in a NIR caption, another garment, "unknown", ...) that the template
does not have; otherwise the template is kept.  The check is deliberately strict: a faithful
paraphrase that words a value differently ("no spoiler" for "not present") is rejected too,
which costs fluency but never correctness.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

from .parser import phrase_pattern
from .schema import Schema
from .stats import UNKNOWN_WORDS

_SKIP_WORDS = {"on", "no", "yes"}  # values too common in prose to count as invented
MAX_LENGTH_RATIO = 2.0  # longer answers carry preambles or added detail


def clean_rewrite(text: Optional[str]) -> str:
    """The answer without surrounding quotes, labels or line breaks."""
    if not isinstance(text, str):
        return ""
    text = re.sub(r"^\s*(?:description|caption)\s*:\s*", "", text.strip(), flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", text).strip().strip('"\'`').strip()


def check_rewrite(schema: Schema, modality: str, values: Mapping[str, Optional[str]], template: str,
                  rewrite: str) -> tuple[bool, str]:
    """``(kept, reason)``: whether ``rewrite`` may replace ``template`` for this modality."""
    if not rewrite:
        return False, "empty answer"
    if len(rewrite.split()) > MAX_LENGTH_RATIO * len(template.split()):
        return False, "too long"
    low_template, low_rewrite = template.lower(), rewrite.lower()
    shown = schema.asked_in(modality)
    if not any(values.get(a.name) is not None for a in shown):
        return False, "no known attribute"
    for attr in shown:
        value = values.get(attr.name)
        if value is None or not phrase_pattern(value.lower()).search(low_template):
            continue
        if not phrase_pattern(value.lower()).search(low_rewrite):
            return False, f"drops {attr.name}={value}"
    vocabulary = {v.lower() for a in schema.attributes for v in (a.values or ())} | set(UNKNOWN_WORDS)
    for phrase in sorted(vocabulary - _SKIP_WORDS):
        pattern = phrase_pattern(phrase)
        if pattern.search(low_rewrite) and not pattern.search(low_template):
            return False, f"invents {phrase!r}"
    return True, "kept"
