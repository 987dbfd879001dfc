"""The caption run: ask every model about every modality image, parse, merge, render
(optionally rewrite), and save, chunk by chunk, so that a killed run resumes where it stopped.

Items whose captions are already in the output folder are skipped.  An item whose requests
still fail after the backend's retries is not written, so the next run asks again; a chunk in
which no request at all gets through stops the run (the endpoint is down or misconfigured).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from tqdm.auto import tqdm

from ..data.builder import MODALITIES, Triple
from .backends import Backend, BackendError, Request
from .items import load_images
from .merge import DEFAULT_MIN_CONFIDENCE, Answer, Merged, merge_answers
from .parser import parse_answer
from .prompts import attribute_prompt, rewrite_prompt
from .render import render_caption
from .rewrite import check_rewrite, clean_rewrite
from .schema import get_schema
from .store import (
    done_items,
    read_split,
    remove_stale_temporaries,
    write_attributes,
    write_manifest,
    write_split,
)

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one run did (the caption statistics themselves come from ``stats.folder_stats``)."""

    new: Counter = field(default_factory=Counter)  # split -> items captioned by this run
    skipped: Counter = field(default_factory=Counter)  # split -> items already captioned
    failed: Counter = field(default_factory=Counter)  # split -> items left for the next run
    requests: int = 0
    rewrites_kept: int = 0
    rewrites_rejected: int = 0
    unknown_attributes: Counter = field(default_factory=Counter)  # attribute -> new items where unknown

    @property
    def total_new(self) -> int:
        return sum(self.new.values())


def _chunks(seq: Sequence, size: int):
    for i in range(0, len(seq), size):
        yield seq[i: i + size]


class CaptionRun:
    """One configured run; ``run(items, output)`` does the work."""

    def __init__(self, backend: Backend, kind: str, models: Sequence[str], *,
                 min_confidence: float = DEFAULT_MIN_CONFIDENCE, rewrite_model: Optional[str] = None,
                 save_every: int = 32, progress: bool = True):
        self.backend, self.kind, self.models = backend, kind, list(models)
        self.schema = get_schema(kind)
        self.min_confidence, self.rewrite_model = min_confidence, rewrite_model
        self.save_every, self.progress = max(1, int(save_every)), progress
        self.prompts = {m: attribute_prompt(self.schema, m) for m in MODALITIES}
        self.summary = RunSummary()

    def run(self, items: dict[str, list[Triple]], output: Path, manifest: Optional[dict] = None) -> RunSummary:
        """Caption ``items`` into ``output``; ``manifest`` (the settings) is written with the first
        captions, so a run that fails before any caption leaves no new files behind."""
        self._manifest = manifest
        if output.is_dir():
            removed = remove_stale_temporaries(output)
            if removed:
                logger.info("removed %d temporary file(s) left by an interrupted run", removed)
        for split, triples in items.items():
            self._run_split(split, triples, output)
        return self.summary

    def _run_split(self, split: str, triples: list[Triple], output: Path) -> None:
        captions = read_split(output, split)
        done = done_items(captions)
        todo = [t for t in triples if t.name not in done]
        self.summary.skipped[split] += len(triples) - len(todo)
        bar = tqdm(total=len(todo), desc=f"captions {split}", unit="item", disable=not self.progress)
        try:
            for chunk in _chunks(todo, self.save_every):
                results = self._caption_chunk(chunk)
                for name, (item_captions, _) in results.items():
                    for modality in MODALITIES:
                        captions[modality][name] = item_captions[modality]
                if results:  # attributes first: the caption files decide what is done
                    if self._manifest is not None:
                        write_manifest(output, self._manifest)
                        self._manifest = None
                    write_attributes(output, split, {name: record for name, (_, record) in results.items()})
                    write_split(output, split, captions)
                self.summary.new[split] += len(results)
                self.summary.failed[split] += len(chunk) - len(results)
                bar.update(len(chunk))
        finally:
            bar.close()

    # ------------------------------------------------------------------ one chunk

    def _caption_chunk(self, chunk: Sequence[Triple]) -> dict[str, tuple[dict, dict]]:
        keys, requests = [], []
        for triple in chunk:
            images = load_images(triple)
            for modality in MODALITIES:
                keys.append((triple.name, modality))
                requests.append(Request(self.prompts[modality], images[modality]))
        texts: dict[tuple[str, str, str], Optional[str]] = {}
        for model in self.models:
            answers = self.backend.generate(model, requests)
            self.summary.requests += len(requests)
            for (name, modality), text in zip(keys, answers):
                texts[(name, modality, model)] = text
        if texts and all(t is None for t in texts.values()):
            raise BackendError(f"no request of the last {len(texts)} got an answer; last error: "
                               f"{self.backend.last_error or 'none reported'}")

        results: dict[str, tuple[dict, dict]] = {}
        merged_of: dict[str, Merged] = {}
        for triple in chunk:
            name = triple.name
            raw = {m: {model: texts[(name, m, model)] for model in self.models} for m in MODALITIES}
            if any(text is None for per_model in raw.values() for text in per_model.values()):
                continue  # left for the next run
            parsed = [Answer(m, model, parse_answer(raw[m][model], self.schema, m))
                      for m in MODALITIES for model in self.models]
            merged = merge_answers(self.schema, parsed, self.models, self.min_confidence)
            merged_of[name] = merged
            item_captions = {m: render_caption(self.kind, m, merged.values_for(m)) for m in MODALITIES}
            results[name] = (item_captions, {"answers": raw, "attributes": merged.to_json()})
            self.summary.unknown_attributes.update(merged.unknown_names())
        if self.rewrite_model and results:
            self._rewrite(results, merged_of)
        return results

    def _rewrite(self, results: dict[str, tuple[dict, dict]], merged_of: dict[str, Merged]) -> None:
        keys, requests = [], []
        for name, (item_captions, record) in results.items():
            for modality in MODALITIES:
                values = merged_of[name].values_for(modality)
                shown = {a.name: values.get(a.name) for a in self.schema.asked_in(modality)}
                if all(v is None for v in shown.values()):  # nothing to put into prose: keep the template
                    record.setdefault("rewrite", {})[modality] = {"answer": None, "kept": False,
                                                                  "reason": "no known attribute"}
                    self.summary.rewrites_rejected += 1
                    continue
                keys.append((name, modality, shown))
                requests.append(Request(rewrite_prompt(self.schema, modality, shown, item_captions[modality])))
        if not requests:
            return
        answers = self.backend.generate(self.rewrite_model, requests)
        self.summary.requests += len(requests)
        for (name, modality, shown), answer in zip(keys, answers):
            item_captions, record = results[name]
            text = clean_rewrite(answer)
            if answer is None:
                kept, reason = False, "request failed"
            else:
                kept, reason = check_rewrite(self.schema, modality, shown, item_captions[modality], text)
            record.setdefault("rewrite", {})[modality] = {"answer": answer, "kept": kept, "reason": reason}
            if kept:
                item_captions[modality] = text
                self.summary.rewrites_kept += 1
            else:
                self.summary.rewrites_rejected += 1
