"""The module that is exported, one per combination of the model's optional inputs.

An ONNX graph has a fixed list of inputs, while the models take ``camera_ids`` (the Side Information Embedding)
and NEXT's captions (``input_ids`` / ``attention_mask``) as optional: left out, PyTorch runs another computation
(no camera embedding; the learned "no text" embeddings without the text tower). So each combination the model
supports is its own graph, named by what it leaves out (``demo.onnx``, ``demo.no-camera.onnx``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["GraphInputs", "OnnxGraph", "graph_inputs_of", "random_inputs"]


@dataclass(frozen=True)
class GraphInputs:
    """Which optional inputs one graph takes; its file name says what it leaves out."""

    cameras: bool
    text: bool

    def suffix(self, model_config) -> str:
        """``""`` for the graph with every input the model has, else ``.no-camera``, ``.no-text`` or both."""
        left_out = []
        if model_config.num_cameras > 0 and not self.cameras:
            left_out.append(".no-camera")
        if bool(getattr(model_config, "uses_text", False)) and not self.text:
            left_out.append(".no-text")
        return "".join(left_out)

    def path(self, output: Path, model_config) -> Path:
        """``output`` (demo.onnx) for the full graph, demo.no-camera.onnx etc. for the others."""
        stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
        return output.with_name(f"{stem}{self.suffix(model_config)}.onnx")


def graph_inputs_of(model_config) -> list[GraphInputs]:
    """Every combination of the optional inputs ``model_config`` has, the full graph first (a model without cameras
    or captions has one graph)."""
    has_cameras = model_config.num_cameras > 0
    has_text = bool(getattr(model_config, "uses_text", False))  # NEXT with captions (use_text and TMSE)
    return [GraphInputs(cameras, text)
            for cameras in ((True, False) if has_cameras else (False,))
            for text in ((True, False) if has_text else (False,))]


class OnnxGraph(torch.nn.Module):
    """Positional tensor inputs in, a tuple of feature tensors out.

    Why a wrapper: the models take optional keyword inputs and return a `ModelOutput` holding dicts, while an ONNX
    graph has a fixed list of tensors on both sides. Which inputs exist depends on the config (cameras, captions)
    and on ``inputs`` (which of them this graph takes); which outputs exist on the feature rows the model names
    (read from one eager call).
    """

    def __init__(self, model, inputs: GraphInputs | None = None):
        super().__init__()
        config = model.config
        self.model = model
        self.inputs = inputs or graph_inputs_of(config)[0]
        self.input_names = ["pixel_values", "modality_mask"]
        if config.num_cameras > 0 and self.inputs.cameras:
            self.input_names.append("camera_ids")
        self.uses_text = bool(getattr(config, "uses_text", False)) and self.inputs.text
        self.max_length = config.text_config.max_position_embeddings if self.uses_text else None
        if self.uses_text:
            self.input_names += ["input_ids", "attention_mask"]
        with torch.no_grad():
            self.rows = list(model(**random_inputs(self, 2, seed=0)).feature_sets)
        self.output_names = ["embeddings"] + [f"features_{row}" for row in self.rows]

    def forward(self, *tensors):
        outputs = self.model(**dict(zip(self.input_names, tensors)))
        return (outputs.embeddings, *(outputs.feature_sets[row] for row in self.rows))

    def dynamic_shapes(self) -> tuple:
        """Batch dynamic everywhere; caption length dynamic in 1..max_position_embeddings."""
        from torch.export import Dim

        batch = Dim("batch")
        shapes = {"pixel_values": {0: batch}, "modality_mask": {0: batch}, "camera_ids": {0: batch}}
        if self.uses_text:
            length = Dim("length", min=1, max=self.max_length)
            shapes["input_ids"] = shapes["attention_mask"] = {0: batch, 2: length}
        return (tuple(shapes[name] for name in self.input_names),)


def random_inputs(graph: OnnxGraph, batch: int, seed: int, length: int | None = None) -> dict:
    """Seeded random inputs by name: images in [-1, 1]; row i misses modality (i + 1) % 4 (none when that is 3);
    random cameras; captions of random token ids between the tokenizer's bos and eos, some empty (all-zero mask)."""
    config = graph.model.config
    generator = torch.Generator().manual_seed(seed)
    height, width = config.image_size
    inputs = {"pixel_values": torch.rand(batch, 3, 3, height, width, generator=generator) * 2 - 1}
    mask = torch.ones(batch, 3, dtype=torch.bool)
    for row in range(batch):
        if (row + 1) % 4 < 3:
            mask[row, (row + 1) % 4] = False
    inputs["modality_mask"] = mask
    if "camera_ids" in graph.input_names:
        inputs["camera_ids"] = torch.randint(0, config.num_cameras, (batch,), generator=generator)
    if graph.uses_text:
        inputs.update(_random_captions(config.text_config, batch, min(length or 8, graph.max_length), generator))
    return {name: inputs[name] for name in graph.input_names}


def _random_captions(text, batch: int, length: int, generator: torch.Generator) -> dict:
    specials = {text.bos_token_id, text.eos_token_id, text.pad_token_id}
    words = torch.tensor([i for i in range(text.vocab_size) if i not in specials])
    prefix, suffix = [[t] if t is not None else [] for t in (text.bos_token_id, text.eos_token_id)]
    pad = text.pad_token_id if text.pad_token_id is not None else 0
    input_ids = torch.full((batch, 3, length), pad, dtype=torch.long)
    attention_mask = torch.zeros(batch, 3, length, dtype=torch.long)
    for row in range(batch):
        for modality in range(3):
            if (row + modality) % 3 == 2:
                continue  # an empty caption
            # the first caption fills the length, the others are shorter or as long
            size = length if row == modality == 0 else int(torch.randint(1, length + 1, (), generator=generator))
            body = words[torch.randint(0, len(words), (max(size - 2, 0),), generator=generator)].tolist()
            ids = torch.tensor(prefix + body + suffix, dtype=torch.long)[-size:]
            input_ids[row, modality, : len(ids)] = ids
            attention_mask[row, modality, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
