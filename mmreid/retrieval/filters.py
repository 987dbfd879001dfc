"""Which gallery rows a search may return (or a delete removes): one :class:`RowFilter`, turned into a row mask for
the FAISS store (searched through a FAISS id selector) and into a boolean expression for Milvus, so that the
top-k is the top-k among the allowed rows on either engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

import numpy as np

from ..errors import UsageError

__all__ = ["FILTER_FIELDS", "RowFilter", "parse_time", "parse_where"]

# The row fields a filter may name (the stores' scalar columns); ``time`` is unix seconds: the capture time when the
# source gives one (a ``captured_at`` column), else when the row was added.
FILTER_FIELDS = ("name", "pid", "camid", "sceneid", "time")
INT_FIELDS = ("pid", "camid", "sceneid", "time")


def parse_time(text: str, what: str) -> int:
    """Unix seconds from an ISO 8601 time (``2026-05-01T08:00``, UTC unless it says otherwise) or a number."""
    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{what} {text}: expected an ISO 8601 time (2026-05-01T08:00) or unix seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def parse_where(terms, what: str = "--where") -> tuple[dict, dict]:
    """``FIELD=V1,V2`` (keep rows with one of the values) and ``FIELD!=V1,V2`` (drop them) -> (include, exclude)."""
    include, exclude = {}, {}
    for term in terms or ():
        negate = "!=" in term
        name, sep, values = term.partition("!=" if negate else "=")
        name = name.strip()
        if not sep or not values.strip():
            raise UsageError(f"{what} {term}: expected FIELD=V1,V2 or FIELD!=V1,V2 (fields: {', '.join(FILTER_FIELDS)})")
        if name not in FILTER_FIELDS:
            raise UsageError(f"{what} {term}: unknown field {name!r}; fields: {', '.join(FILTER_FIELDS)}")
        parts = [v.strip() for v in values.split(",") if v.strip()]
        if name in INT_FIELDS:
            try:
                parts = [int(v) for v in parts]
            except ValueError:
                raise UsageError(f"{what} {term}: {name} takes integers") from None
        (exclude if negate else include).setdefault(name, []).extend(parts)
    return {k: tuple(v) for k, v in include.items()}, {k: tuple(v) for k, v in exclude.items()}


@dataclass
class RowFilter:
    """Rows allowed: every ``include`` field holds one of its values, no ``exclude`` field holds one of its values,
    ``since <= time < until``, and, with ``same_camera`` = (camid, pid or None), not the query's camera (and
    identity): the camera protocol's same-camera rule."""

    include: dict = field(default_factory=dict)
    exclude: dict = field(default_factory=dict)
    since: Optional[int] = None
    until: Optional[int] = None
    same_camera: Optional[tuple] = None

    def __post_init__(self):
        for name in (*self.include, *self.exclude):
            if name not in FILTER_FIELDS:
                raise UsageError(f"filter field {name!r} is unknown; fields: {', '.join(FILTER_FIELDS)}")

    @property
    def empty(self) -> bool:
        return not (self.include or self.exclude or self.since is not None or self.until is not None
                    or self.same_camera is not None)

    def mask(self, columns: dict) -> np.ndarray:
        """Boolean mask of the allowed rows, from the store's columns as arrays (``columns[field]``)."""
        n = len(columns["name"])
        keep = np.ones(n, dtype=bool)
        for name, values in self.include.items():
            keep &= np.isin(columns[name], np.asarray(values, dtype=columns[name].dtype))
        for name, values in self.exclude.items():
            keep &= ~np.isin(columns[name], np.asarray(values, dtype=columns[name].dtype))
        if self.since is not None:
            keep &= columns["time"] >= self.since
        if self.until is not None:
            keep &= columns["time"] < self.until
        if self.same_camera is not None:
            camid, pid = self.same_camera
            same = columns["camid"] == camid
            if pid is not None:
                same &= columns["pid"] == pid
            keep &= ~same
        return keep

    def expression(self) -> str:
        """The same rule as a Milvus boolean expression ("" = every row)."""
        terms = [f"{name} in {_literal(values)}" for name, values in self.include.items()]
        terms += [f"{name} not in {_literal(values)}" for name, values in self.exclude.items()]
        if self.since is not None:
            terms.append(f"time >= {int(self.since)}")
        if self.until is not None:
            terms.append(f"time < {int(self.until)}")
        if self.same_camera is not None:
            camid, pid = self.same_camera
            terms.append(f"camid != {int(camid)}" if pid is None else f"not (camid == {int(camid)} and pid == {int(pid)})")
        return " and ".join(f"({t})" for t in terms)


def _literal(values) -> str:
    return json.dumps([v if isinstance(v, str) else int(v) for v in values])
