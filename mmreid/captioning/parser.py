"""A tolerant reader of the models' attribute answers.

Models answer in many shapes: numbered lines, bullets, markdown, several attributes on one
line, JSON, percentages or words instead of numbers, no confidence at all, values outside the
schema, free text.  ``parse_answer`` reads what it can and never raises: whatever it cannot
map to an allowed value becomes unknown (``value=None``), and lines it cannot place are dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from .schema import Attribute, Schema

DEFAULT_CONFIDENCE = 0.5  # an answer without a confidence: counts, but loses to any stated higher one
CONFIDENCE_WORDS = {"very high": 0.95, "high": 0.85, "medium": 0.6, "moderate": 0.6, "low": 0.3, "very low": 0.15}

# Answers that say "cannot tell" (checked after the attribute's own values and synonyms, so
# that e.g. a licence plate that is "not visible" keeps that meaning).
_UNKNOWN_RE = re.compile(
    r"^\?+$|\b(unknown|unclear|uncertain|unsure|not sure|not visible|invisible|cannot|can ?not|can't|unable|"
    r"indeterminate|undetermined|unidentifiable|unknowable|unspecified|not applicable|n/a|na|undefined|"
    r"ambiguous|not determinable|not discernible|indiscernible|hard to tell|difficult to)\b"
)
_NEGATION_RE = re.compile(r"^(no|not|none|nothing|without|neither)\b|\bn't\b|\bnot\b")
_ARTICLE_RE = re.compile(r"^(a|an|the)\s+")
_CONF_WORDS = "|".join(sorted(CONFIDENCE_WORDS, key=len, reverse=True))
_CONF_RE = re.compile(
    r"[\s,;(\[-]*\b(?:confidence|conf|certainty|probability|score)(?:\s+(?:level|score))?\s*(?:[:=]|is)?\s*"
    rf"(?:(?P<num>\d*\.?\d+)\s*(?P<pct>%)?|(?P<word>{_CONF_WORDS}))[)\]]?\s*\.?\s*$"
)
_BARE_CONF_RE = re.compile(
    r"(?:\s*[(\[]\s*(?P<num>\d*\.?\d+)\s*(?P<pct>%)?\s*[)\]]|\s*[,;-]\s*(?P<num2>\d*\.\d+|\d{1,3}\s*%))\s*\.?\s*$"
)
_NUMBER_PREFIX_RE = re.compile(r"^\s*(?:[-*•>]+\s*)?(?:\(?(?P<n>\d{1,2})[.):]|(?P<m>\d{1,2})\s+-)?\s*")
_SEGMENT_SPLIT_RE = re.compile(r"\n|;|\s/\s|\s\|\s")
_NAME_SPLIT_RE = re.compile(r"\s*(?::|=|\s-\s)\s*")
_NAME_WORDS = {"colour": "color", "garment": "clothing", "clothes": "clothing", "tyre": "tire", "tyres": "tire",
               "tires": "tire", "headlight": "headlights", "taillight": "taillights", "carried": "carrying",
               "carry": "carrying", "viewpoint": "view", "viewing": "view", "angle": "view", "sex": "gender"}


@dataclass(frozen=True)
class Observation:
    """One attribute as read from one answer; ``value`` is None when unknown."""

    value: Optional[str]
    confidence: float


def _clean(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = re.sub(r"[*_`#\"]+", " ", text)
    return re.sub(r"\s+", " ", text).strip(" \t.,;:!()[]{}'")


def _name_tokens(text: str) -> frozenset[str]:
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    return frozenset(_NAME_WORDS.get(w, w).rstrip("s") or w for w in words)


class _Names:
    """Attribute lookup by (approximate) name: exact token sets first, then the attribute whose
    name tokens are all in the given name, the most specific one winning."""

    def __init__(self, schema: Schema):
        self.keys = []
        for attr in schema.attributes:
            for form in {attr.name.replace("_", " "), attr.question}:
                self.keys.append((_name_tokens(form), attr))

    def find(self, name: str) -> Optional[Attribute]:
        tokens = _name_tokens(name)
        if not tokens:
            return None
        for key, attr in self.keys:
            if key == tokens:
                return attr
        best = [(len(key), attr) for key, attr in self.keys if key <= tokens]
        return max(best, key=lambda x: x[0])[1] if best else None


def _confidence(num: Optional[str], pct: Optional[str], word: Optional[str]) -> float:
    if word:
        return CONFIDENCE_WORDS[word]
    try:
        value = float(num.replace("%", "").strip())  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        return DEFAULT_CONFIDENCE
    if pct or "%" in (num or "") or (value > 1 and value.is_integer()):  # "80" and "80%" mean 0.8
        value /= 100.0
    return value if 0.0 <= value <= 1.0 else DEFAULT_CONFIDENCE


def split_confidence(text: str) -> tuple[str, float]:
    """``"adult, confidence: 0.8"`` -> ``("adult", 0.8)``; no confidence -> the default."""
    m = _CONF_RE.search(text)
    if m:
        return text[: m.start()], _confidence(m.group("num"), m.group("pct"), m.group("word"))
    m = _BARE_CONF_RE.search(text)
    if m:
        return text[: m.start()], _confidence(m.group("num") or m.group("num2"), m.group("pct"), None)
    return text, DEFAULT_CONFIDENCE


def phrase_pattern(phrase: str) -> re.Pattern:
    """A whole-word match of ``phrase``, plural tolerated ("backpack" finds "backpacks")."""
    return re.compile(rf"(?<!\w){re.escape(phrase)}(?:e?s)?(?!\w)")


def map_value(attr: Attribute, raw: str) -> Optional[str]:
    """Map a free-text answer to one allowed value of ``attr``, or None (unknown)."""
    original = _ARTICLE_RE.sub("", _clean(str(raw)))
    value = original.lower()
    if not value:
        return None
    if attr.values is None:  # open vocabulary: a short name, kept as written
        if _UNKNOWN_RE.search(value) or _NEGATION_RE.search(value) or len(value.split()) > 3:
            return None
        if not re.fullmatch(r"[^\W_][\w .&'+-]*", original):
            return None
        return original.title() if original.islower() else original
    canonical = {v.lower(): v for v in attr.values}
    if value in canonical:
        return canonical[value]
    if value in attr.synonyms:
        return attr.synonyms[value]
    if _UNKNOWN_RE.search(value):
        return None
    if _NEGATION_RE.search(value):
        return attr.negative
    phrases = {**{k: v for k, v in attr.synonyms.items()}, **canonical}
    spans = []
    for phrase, target in phrases.items():
        for m in phrase_pattern(phrase).finditer(value):
            spans.append((m.start(), m.end(), target))
    spans = [s for s in spans if not any(o[0] <= s[0] and s[1] <= o[1] and (o[1] - o[0]) > (s[1] - s[0])
                                         for o in spans)]
    if not spans:
        return None
    return max(spans, key=lambda s: (s[1], s[1] - s[0]))[2]  # the last one: English puts the head noun last


def _json_triples(data) -> Iterator[tuple[str, str, Optional[float]]]:
    """(name, value, confidence) from the JSON shapes models use for attribute lists."""
    if isinstance(data, dict):
        for key in ("attributes", "result", "results", "answer"):
            if isinstance(data.get(key), (dict, list)) and len(data) == 1:
                yield from _json_triples(data[key])
                return
        name = data.get("attribute", data.get("name"))
        if isinstance(name, str) and "value" in data:
            yield name, str(data.get("value")), _json_confidence(data.get("confidence"))
            return
        for key, val in data.items():
            if isinstance(val, dict):
                inner = val.get("value", val.get("answer"))
                yield str(key), str(inner), _json_confidence(val.get("confidence", val.get("conf")))
            elif isinstance(val, (list, tuple)) and len(val) == 2:
                yield str(key), str(val[0]), _json_confidence(val[1])
            elif isinstance(val, (str, int, float, bool)) or val is None:
                yield str(key), str(val), None
    elif isinstance(data, list):
        for entry in data:
            if isinstance(entry, dict):
                yield from _json_triples(entry)


def _json_confidence(value) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return _confidence(str(value), None, None)
    if isinstance(value, str):
        return split_confidence(f"confidence: {value.strip().lower()}")[1]
    return None


def _json_answer(text: str) -> Optional[list]:
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return None
    start = min(starts)
    end = max(text.rfind("}"), text.rfind("]"))
    try:
        data = json.loads(text[start: end + 1])
    except (ValueError, RecursionError):
        return None
    triples = list(_json_triples(data))
    return triples or None


def _line_triples(text: str, names: _Names, numbered: tuple[Attribute, ...]) -> Iterator[tuple]:
    for segment in _SEGMENT_SPLIT_RE.split(text):
        prefix = _NUMBER_PREFIX_RE.match(segment)
        number = prefix.group("n") or prefix.group("m") if prefix else None
        body = segment[prefix.end():] if prefix else segment
        parts = _NAME_SPLIT_RE.split(body, maxsplit=1)
        attr = None
        if len(parts) == 2 and "confidence" not in parts[0].lower():
            attr = names.find(_clean(parts[0]))
            rest = parts[1]
        if attr is None:  # "3. backpack, confidence: 0.9": the number says which attribute
            k = int(number) if number else 0
            if not 1 <= k <= len(numbered) or len(parts) == 2 and "confidence" not in parts[0].lower():
                continue
            attr, rest = numbered[k - 1], body
        value, conf = split_confidence(rest)
        yield attr, value, conf


def parse_answer(text, schema: Schema, modality: str) -> dict[str, Observation]:
    """Read one model answer about one ``modality`` image into ``{attribute: Observation}``.

    Attributes the answer does not mention are absent; mentioned but unreadable ones are
    present with ``value=None``.  When an attribute appears twice, the known value with the
    higher confidence wins.
    """
    try:
        return _parse(text, schema, modality)
    except Exception:  # a parser bug must not stop a run of thousands of images
        return {}


def _parse(text, schema: Schema, modality: str) -> dict[str, Observation]:
    if not isinstance(text, str) or not text.strip():
        return {}
    names = _Names(schema)
    triples: Iterable[tuple] = ()
    json_triples = _json_answer(text)
    if json_triples:
        resolved = []
        for name, value, conf in json_triples:
            attr = names.find(name)
            if attr is not None:
                resolved.append((attr, *split_confidence(value)) if conf is None else (attr, value, conf))
        triples = resolved
    if not triples:
        triples = _line_triples(text, names, schema.asked_in(modality))
    out: dict[str, Observation] = {}
    for attr, raw_value, conf in triples:
        obs = Observation(map_value(attr, raw_value), round(float(conf), 4))
        old = out.get(attr.name)
        if old is None or (obs.value is not None and (old.value is None or obs.confidence > old.confidence)):
            out[attr.name] = obs
    return out
