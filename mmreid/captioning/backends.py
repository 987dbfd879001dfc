"""What every backend offers the pipeline, and how one is chosen.

A backend turns requests (a prompt, with or without one image) into answer texts, for one
model at a time.  A request that still fails after the backend's retries gives ``None``: the
pipeline leaves that item for the next run.  Failures that retrying cannot fix (a model that
does not load, an endpoint refusing the key) raise ``BackendError`` and stop the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

BACKENDS = ("transformers", "openai")


class BackendError(RuntimeError):
    """A failure that stops the run: wrong model, endpoint or key, or no request getting through."""


@dataclass(frozen=True)
class Request:
    prompt: str
    image: Optional[bytes] = None  # encoded JPEG or PNG; None for a text-only request (the rewrite)


class Backend(Protocol):
    last_error: str

    def generate(self, model: str, requests: Sequence[Request]) -> list[Optional[str]]:
        """One answer per request, in order; None where the request failed after retries."""

    def close(self) -> None:
        """Release threads, connections or models."""


def image_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"BM"):
        return "image/bmp"
    return "image/jpeg"


def make_backend(name: str, **options) -> Backend:
    """``transformers`` takes batch_size, max_new_tokens, device; ``openai`` takes endpoint,
    api_key_env, concurrency, timeout, retries, backoff, max_new_tokens."""
    if name == "transformers":
        from .backend_transformers import TransformersBackend

        keys = ("batch_size", "max_new_tokens", "device")
        return TransformersBackend(**{k: options[k] for k in keys if k in options})
    if name == "openai":
        from .backend_openai import OpenAIBackend

        keys = ("endpoint", "api_key_env", "concurrency", "timeout", "retries", "backoff", "max_new_tokens")
        return OpenAIBackend(**{k: options[k] for k in keys if k in options})
    raise ValueError(f"--backend {name!r}: expected one of {', '.join(BACKENDS)}")
