"""Merging the parsed answers of all modalities and models, attribute by attribute.

For each attribute the known value with the highest confidence wins (the paper's "ONLY the
highest-confidence attributes"), among the answers whose modality may give it
(``Attribute.sources``) and whose confidence reaches ``min_confidence``; nothing left means
unknown.  Ties go to the earlier modality (RGB, NIR, TIR) and then the earlier ``--model``,
so the result does not depend on the order answers arrive in.  ``per_image`` attributes
(lighting, clarity) are merged across models only, once per modality.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence

from ..data.builder import MODALITIES
from .parser import Observation
from .schema import Schema

DEFAULT_MIN_CONFIDENCE = 0.5


@dataclass(frozen=True)
class Choice:
    """The winning value of one attribute and where it came from."""

    value: str
    confidence: float
    modality: str
    model: str


@dataclass(frozen=True)
class Answer:
    """The parsed answer of one model about one modality image."""

    modality: str
    model: str
    observations: Mapping[str, Observation]


@dataclass
class Merged:
    """Merged attributes of one item: object-level, and per-image ones per modality."""

    objects: dict[str, Optional[Choice]]
    images: dict[str, dict[str, Optional[Choice]]]

    def values_for(self, modality: str) -> dict[str, Optional[str]]:
        """What the ``modality`` caption may show: ``{attribute: value or None}``."""
        chosen = {**self.objects, **self.images.get(modality, {})}
        return {name: (c.value if c is not None else None) for name, c in chosen.items()}

    def unknown_names(self) -> list[str]:
        """Attributes left unknown (per-image ones: in at least one modality)."""
        names = [n for n, c in self.objects.items() if c is None]
        names += [n for per in self.images.values() for n, c in per.items() if c is None]
        return list(dict.fromkeys(names))

    def to_json(self) -> dict:
        enc = lambda d: {k: (asdict(v) if v is not None else None) for k, v in d.items()}  # noqa: E731
        return {"objects": enc(self.objects), "images": {m: enc(d) for m, d in self.images.items()}}


def _best(candidates: list[tuple[int, Choice]]) -> Optional[Choice]:
    if not candidates:
        return None
    return min(candidates, key=lambda c: (-c[1].confidence, c[0]))[1]


def merge_answers(schema: Schema, answers: Sequence[Answer], models: Sequence[str],
                  min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> Merged:
    """Merge the answers about one item (any number of modalities and models)."""
    rank = {(m, model): i for i, (m, model) in enumerate((m, model) for m in MODALITIES for model in models)}
    objects: dict[str, Optional[Choice]] = {}
    images: dict[str, dict[str, Optional[Choice]]] = {m: {} for m in MODALITIES}
    for attr in schema.attributes:
        pools: dict[str, list[tuple[int, Choice]]] = {m: [] for m in attr.sources} if attr.per_image else {"": []}
        for ans in answers:
            obs = ans.observations.get(attr.name)
            if ans.modality not in attr.sources or obs is None or obs.value is None:
                continue
            if obs.confidence < min_confidence:
                continue
            key = ans.modality if attr.per_image else ""
            pools[key].append((rank.get((ans.modality, ans.model), len(rank)),
                               Choice(obs.value, obs.confidence, ans.modality, ans.model)))
        if attr.per_image:
            for modality, pool in pools.items():
                images[modality][attr.name] = _best(pool)
        else:
            objects[attr.name] = _best(pools[""])
    return Merged(objects, {m: d for m, d in images.items() if d})
