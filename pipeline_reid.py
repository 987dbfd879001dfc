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

Images are PIL images, NumPy arrays / torch tensors (as the processor takes them) or paths / URLs (read with
``transformers.image_utils.load_image``); ``None`` marks a missing modality.
"""

from __future__ import annotations

from typing import Any

import torch
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
        single = not (isinstance(images, (list, tuple)) and images and isinstance(images[0], (list, tuple)))
        triples = [images] if single else list(images)
        if single and camera_ids is not None and not isinstance(camera_ids, (list, tuple)):
            camera_ids = [camera_ids]
        if single and text is not None:
            text = [text]
        for name, value in (("camera_ids", camera_ids), ("text", text)):
            if value is not None and len(value) != len(triples):
                raise ValueError(f"{name}: {len(value)} value(s) for {len(triples)} triple(s); give one per sample")
        size = max(int(batch_size or self._batch_size or DEFAULT_CHUNK_SIZE), 1)
        self._sanitize_parameters(**kwargs)
        results = []
        for start in range(0, len(triples), size):  # one model call per chunk of triples
            chunk = {"images": triples[start:start + size],
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
        triples = [[_read(image) for image in triple] if isinstance(triple, (list, tuple)) else triple
                   for triple in chunk["images"]]  # a malformed triple is named by the processor
        kwargs = {key: chunk[key] for key in ("camera_ids", "text") if chunk[key] is not None}
        return processor(images=triples, **kwargs)

    def _forward(self, model_inputs):
        outputs = self.model(**model_inputs)
        return {"embeddings": outputs.embeddings, "expert_weights": getattr(outputs, "expert_weights", None)}

    def postprocess(self, model_outputs: dict) -> list[dict[str, torch.Tensor]]:
        weights = model_outputs["expert_weights"]
        return [{"embedding": embedding.float(), **({} if weights is None else {"expert_weights": weights[i].float()})}
                for i, embedding in enumerate(model_outputs["embeddings"])]


def _read(image: Any) -> Any:
    """A path or URL becomes a PIL image; anything else goes to the processor as it is."""
    return load_image(image) if isinstance(image, str) else image


__all__ = ["ReIDFeatureExtractionPipeline", "TASK", "custom_pipelines_entry"]
