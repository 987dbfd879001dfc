"""Local models through ``transformers`` pipelines, batched.

Image requests use the ``image-text-to-text`` pipeline (any vision-language model that
supports it: Qwen2.5-VL, LLaVA, SmolVLM, Gemma 3, ...); text-only requests (the optional
rewrite) use the same pipeline when the model is a vision-language one, else
``text-generation``.  Decoding is greedy, so a rerun gives the same answers.  Every model
named stays loaded for the whole run.
"""

from __future__ import annotations

import io
import logging
from typing import Optional, Sequence

from .backends import BackendError, Request

logger = logging.getLogger(__name__)


def _text_of(output) -> str:
    """The generated text of one pipeline output, whatever nesting the pipeline used."""
    if isinstance(output, list):
        output = output[0] if output else {}
    text = output.get("generated_text", "") if isinstance(output, dict) else output
    if isinstance(text, list):  # chat format: the last message is the answer
        text = text[-1].get("content", "") if text and isinstance(text[-1], dict) else ""
    return text if isinstance(text, str) else ""


class TransformersBackend:
    def __init__(self, batch_size: int = 8, max_new_tokens: int = 512, device: Optional[str] = None):
        import torch

        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = int(max_new_tokens)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._pipes: dict[tuple[str, str], object] = {}
        self.last_error = ""

    def _task_for_text(self, model: str) -> str:
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        try:
            model_type = AutoConfig.from_pretrained(model).model_type
        except Exception as exc:
            raise BackendError(f"--model {model}: cannot read its config ({type(exc).__name__}: {exc})") from None
        return "image-text-to-text" if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES else "text-generation"

    def _pipeline(self, model: str, task: str):
        key = (model, task)
        if key not in self._pipes:
            from transformers import pipeline

            try:
                pipe = pipeline(task, model=model, device=self.device, dtype="auto")
            except Exception as exc:
                raise BackendError(
                    f"--model {model}: cannot load it as a local {task} model ({type(exc).__name__}: {exc})"
                ) from None
            tokenizer = getattr(pipe, "tokenizer", None) or getattr(getattr(pipe, "processor", None), "tokenizer", None)
            if tokenizer is not None:
                tokenizer.padding_side = "left"  # batched generation with a decoder-only model
            self._pipes[key] = pipe
        return self._pipes[key]

    def generate(self, model: str, requests: Sequence[Request]) -> list[Optional[str]]:
        if not requests:
            return []
        from PIL import Image

        with_images = [r.image is not None for r in requests]
        if any(with_images) and not all(with_images):
            raise ValueError("mix requests with and without images in separate calls")
        task = "image-text-to-text" if with_images[0] else self._task_for_text(model)
        pipe = self._pipeline(model, task)
        messages = []
        for r in requests:
            if r.image is not None:
                image = Image.open(io.BytesIO(r.image)).convert("RGB")
                content = [{"type": "image", "image": image}, {"type": "text", "text": r.prompt}]
            elif task == "image-text-to-text":
                content = [{"type": "text", "text": r.prompt}]
            else:
                content = r.prompt
            messages.append([{"role": "user", "content": content}])
        kwargs = dict(batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, return_full_text=False)
        try:
            if task == "image-text-to-text":
                outputs = pipe(text=messages, generate_kwargs={"do_sample": False}, **kwargs)
            else:
                outputs = pipe(messages, do_sample=False, **kwargs)
        except Exception as exc:
            hint = "; a smaller --batch-size may help" if "out of memory" in str(exc).lower() else ""
            raise BackendError(f"--model {model}: generation failed ({type(exc).__name__}: {exc}){hint}") from None
        return [_text_of(o) for o in outputs]

    def close(self) -> None:
        self._pipes.clear()
