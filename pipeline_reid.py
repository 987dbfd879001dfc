"""The ``transformers`` pipeline shipped with every checkpoint: image triples in, retrieval embeddings out.

    pipe = pipeline("image-feature-extraction", model=checkpoint, trust_remote_code=True)
    pipe([rgb, nir, tir])                              # -> {"embedding": (D,), "expert_weights": (heads, E)}
    pipe([[rgb, nir, None], [rgb2, nir2, tir2]], camera_ids=[0, 2])   # a batch: a list of dicts

Why the task name ``image-feature-extraction``: ``pipeline()`` looks the task up in the checkpoint's
``config.json`` ``custom_pipelines`` before its own registry, so with ``trust_remote_code=True`` the Hub task of
embedding models (the card's ``pipeline_tag``, the one the Hub's "Use this model" snippet names) runs this class,
which keeps the three images of a sample together, instead of the built-in one, which would embed each image alone.
Without ``trust_remote_code`` ``pipeline()`` refuses, saying the repo's pipeline code must be trusted.

The class is not registered process-wide: a process-wide registration under that name would replace the built-in
pipeline for every other model of the process. The checkpoint's ``custom_pipelines`` entry is what ``pipeline()``
reads; it has the form ``PIPELINE_REGISTRY.register_pipeline`` + ``Pipeline.save_pretrained`` write
(:func:`custom_pipelines_entry`).

Images are PIL images, NumPy arrays / torch tensors (as the processor takes them) or file paths / URLs / base64
strings (read with ``transformers.image_utils.load_image``); ``None`` marks a missing modality. Odd input is named by
its position (``images[1][2]``) before anything is read: a file that does not exist, a folder, a file that is not
an image, a triple of the wrong length or nesting.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline
from transformers.image_utils import load_image

TASK = "image-feature-extraction"
PIPELINE_MODEL_CLASS = "AutoModel"
DEFAULT_CHUNK_SIZE = 32  # triples per model call when a long list is given


def custom_pipelines_entry() -> dict[str, dict[str, Any]]:
    """The ``config.custom_pipelines`` value that makes ``pipeline(TASK, model=checkpoint, trust_remote_code=True)``
    load :class:`ReIDFeatureExtractionPipeline` from the checkpoint's own copy of this file."""
    impl = f"{ReIDFeatureExtractionPipeline.__module__.split('.')[-1]}.{ReIDFeatureExtractionPipeline.__name__}"
    return {TASK: {"impl": impl, "pt": [PIPELINE_MODEL_CLASS], "type": "multimodal"}}


class ReIDFeatureExtractionPipeline(Pipeline):
    r"""
    Embeds multi-modal (RGB, near-infrared, thermal-infrared) samples with a re-identification checkpoint: the
    checkpoint's processor, then its model, in evaluation mode and without gradients.

    Call it with one `[rgb, nir, tir]` triple (returns one dict) or a list of triples (returns a list of dicts):

    - `camera_ids` (*optional*): the camera of the sample (an int) or of each sample (a list), for checkpoints with
      camera embeddings; leave it out for a camera the model never saw.
    - `text` (*optional*, models that read captions, e.g. NEXT): one `[rgb, nir, tir]` caption triple per sample
      (`""` or `None` where there is none).
    - `batch_size` (*optional*): triples per model call (default 32).

    Each result holds `embedding`, the model's retrieval feature `(D,)` (rank a gallery by distance between
    L2-normalised embeddings), and `expert_weights` when the model reports them (DeMo: `(heads, 7)` over the experts
    R, N, T, RN, RT, NT, RNT).
    """

    _load_processor = None  # models that read captions: the processor with its tokenizer; else an image processor
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False  # the processor carries it

    def __call__(self, images, camera_ids=None, text=None, batch_size: int | None = None, **kwargs):
        triples, single = _triples(images)
        camera_ids = _per_sample("camera_ids", camera_ids, len(triples), single)
        text = _per_sample("text", text, len(triples), single)
        size = max(int(batch_size or self._batch_size or DEFAULT_CHUNK_SIZE), 1)
        self._sanitize_parameters(**kwargs)
        results = []
        for start in range(0, len(triples), size):  # one model call per chunk of triples
            chunk = {"images": triples[start:start + size], "start": start, "single": single,
                     "camera_ids": None if camera_ids is None else list(camera_ids[start:start + size]),
                     "text": None if text is None else list(text[start:start + size])}
            results += self.run_single(chunk, {}, {}, {})
        return results[0] if single else results

    def _sanitize_parameters(self, **kwargs):
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)}; this pipeline takes images, camera_ids, text "
                            "and batch_size")
        return {}, {}, {}

    def preprocess(self, chunk: dict):
        if chunk["text"] is not None and not getattr(self.model.config, "uses_text", False):
            raise ValueError("text: this checkpoint's model reads no captions; leave `text` out")
        processor = self.processor if self.processor is not None else self.image_processor
        first = chunk["start"]
        names = ["images"] if chunk["single"] else [f"images[{first + i}]" for i in range(len(chunk["images"]))]
        triples = [[_read(image, f"{name}[{m}]") for m, image in enumerate(triple)]
                   for name, triple in zip(names, chunk["images"])]
        kwargs = {key: chunk[key] for key in ("camera_ids", "text") if chunk[key] is not None}
        return processor(images=triples, **kwargs)

    def _forward(self, model_inputs):
        outputs = self.model(**model_inputs)
        return {"embeddings": outputs.embeddings, "expert_weights": getattr(outputs, "expert_weights", None)}

    def postprocess(self, model_outputs: dict) -> list[dict[str, torch.Tensor]]:
        weights = model_outputs["expert_weights"]
        return [{"embedding": embedding.float(), **({} if weights is None else {"expert_weights": weights[i].float()})}
                for i, embedding in enumerate(model_outputs["embeddings"])]


IMAGE_KINDS = (Image.Image, np.ndarray, torch.Tensor, str, os.PathLike)
EXPECTED_IMAGE = "a PIL image, a NumPy array or torch tensor, an image file path, URL or base64 string, or None"
EXPECTED_TRIPLES = ("one [rgb, nir, tir] triple or a list of triples (None for a missing modality), e.g. "
                    "pipe([rgb, nir, None]) or pipe([[rgb, nir, tir], [rgb2, None, tir2]])")


def _is_triple_like(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _triples(images: Any) -> tuple[list, bool]:
    """The samples as a list of triples, and whether one triple (not a list of them) was given. Checks the nesting,
    the lengths and the kind of every entry, naming the first odd one by its position."""
    if not _is_triple_like(images):
        raise ValueError(f"images: expected {EXPECTED_TRIPLES}; got a single {type(images).__name__}")
    if not images:
        raise ValueError(f"images: got an empty list; expected {EXPECTED_TRIPLES}")
    single = not any(_is_triple_like(entry) for entry in images)
    triples = [images] if single else list(images)
    for i, triple in enumerate(triples):
        where = "images" if single else f"images[{i}]"
        if not _is_triple_like(triple):
            raise ValueError(f"{where}: expected a [rgb, nir, tir] triple, got {type(triple).__name__}; give every "
                             "sample as a triple")
        if len(triple) != 3:
            nested = " (nested one level too deep?)" if len(triple) == 1 and _is_triple_like(triple[0]) else ""
            raise ValueError(f"{where}: expected a [rgb, nir, tir] triple (None for a missing modality), got "
                             f"{len(triple)} entr{'y' if len(triple) == 1 else 'ies'}{nested}")
        for m, image in enumerate(triple):
            if image is not None and not isinstance(image, IMAGE_KINDS):
                nested = " (nested one level too deep?)" if _is_triple_like(image) else ""
                raise ValueError(f"{where}[{m}]: expected {EXPECTED_IMAGE}; got {type(image).__name__}{nested}")
            if isinstance(image, (str, os.PathLike)):
                _local_file(image, f"{where}[{m}]")  # every file is checked before the first chunk runs
    return triples, single


def _per_sample(name: str, value: Any, count: int, single: bool) -> list | None:
    """``camera_ids`` or ``text`` as one entry per triple: for one triple, its camera id (an int) or its caption
    triple; for a list of triples, a list as long."""
    if value is None:
        return None
    if single:
        if name == "text" and (isinstance(value, str) or (_is_triple_like(value) and value
                                                          and all(_is_triple_like(v) for v in value))):
            raise ValueError(f"text: expected one [rgb, nir, tir] caption triple ('' or None where missing) for the "
                             f"one image triple, got {type(value).__name__} {str(value)[:80]!r}")
        return [value] if name == "text" or not _is_triple_like(value) else list(value)
    if not _is_triple_like(value):
        raise ValueError(f"{name}: expected a list with one entry per triple ({count}), got {type(value).__name__}")
    if len(value) != count:
        raise ValueError(f"{name}: {len(value)} value(s) for {count} triple(s); give one per sample")
    return list(value)


def _local_file(image: str | os.PathLike, where: str) -> str | None:
    """The file ``image`` names, or None for a URL or base64 string; a folder or a missing file is an error."""
    image = os.fspath(image)
    if image.startswith(("http://", "https://")):
        return None
    path = os.path.expanduser(image)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{where}: {image} is a folder; expected an image file")
    if os.path.exists(path):
        return path
    if image.startswith("data:image/"):
        return None
    try:
        base64.b64decode("".join(image.split()), validate=True)
    except ValueError:  # binascii.Error
        raise FileNotFoundError(f"{where}: no such file {image} (nor a URL or a base64-encoded image)") from None
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read(image: Any, where: str) -> Any:
    """A path, URL or base64 string becomes a PIL image (errors name ``where`` and the file); anything else goes to
    the processor as it is."""
    if not isinstance(image, (str, os.PathLike)):
        return image
    path = _local_file(image, where)
    if path is not None:
        try:
            return load_image(path)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # PIL's errors are OSErrors
            raise ValueError(f"{where}: {os.fspath(image)} is not a readable image ({_first_line(exc)})") from None
    image = os.fspath(image)
    try:
        return load_image(image)
    except Exception as exc:  # the HTTP client's errors, PIL's, base64's
        if image.startswith(("http://", "https://")):
            what = f"could not read an image from {image}"
        else:
            what = f"{_short(image)}: no such file, and not a base64-encoded image"
        raise ValueError(f"{where}: {what} ({type(exc).__name__}: {_first_line(exc)})") from None


def _short(source: str, limit: int = 100) -> str:
    """A URL as it is, a base64 string cut (it can be megabytes long)."""
    return source if len(source) <= limit else f"{source[:limit]}... ({len(source)} characters)"


__all__ = ["ReIDFeatureExtractionPipeline", "TASK", "custom_pipelines_entry"]
