"""OpenAI-compatible chat-completions backend (vLLM, Ollama, llama.cpp server, hosted APIs).

Plain ``urllib`` and a thread pool: no client library needed.  Images travel inline as
base64 data URLs; ``concurrency`` requests run at once; each request has a timeout and is
retried with exponential backoff on timeouts, connection errors, HTTP 408/409/425/429 and 5xx
(honouring ``Retry-After``).  The API key is read from an environment variable, sent only in
the ``Authorization`` header, and kept out of every message this module produces.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

from .backends import BackendError, Request, image_mime

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 60.0


def chat_url(endpoint: str) -> str:
    """``http://host:8000/v1`` -> ``http://host:8000/v1/chat/completions`` (a full URL is kept)."""
    endpoint = endpoint.rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"--endpoint {endpoint!r}: expected an http:// or https:// URL, e.g. http://localhost:8000/v1")
    return endpoint if endpoint.endswith("/chat/completions") else endpoint + "/chat/completions"


def _content(data) -> str:
    content = data["choices"][0]["message"]["content"]
    if isinstance(content, list):  # some servers answer in parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is None:
        return ""
    if not isinstance(content, str):
        raise ValueError("message content is not text")
    return content


class OpenAIBackend:
    def __init__(self, endpoint: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4,
                 timeout: float = 120.0, retries: int = 3, backoff: float = 1.0, max_new_tokens: int = 512):
        self.url = chat_url(endpoint)
        self._key = os.environ.get(api_key_env) or None  # never logged, printed or written
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.max_new_tokens = int(max_new_tokens)
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(concurrency)), thread_name_prefix="caption-http")
        self._lock = threading.Lock()
        self.last_error = ""

    # ------------------------------------------------------------------ public

    def generate(self, model: str, requests: Sequence[Request]) -> list[Optional[str]]:
        return list(self._pool.map(lambda r: self._one(model, r), requests))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ internals

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _body(self, model: str, req: Request) -> bytes:
        content: list[dict] = [{"type": "text", "text": req.prompt}]
        if req.image is not None:
            url = f"data:{image_mime(req.image)};base64,{base64.b64encode(req.image).decode('ascii')}"
            content.insert(0, {"type": "image_url", "image_url": {"url": url}})
        message = {"role": "user", "content": content if req.image is not None else req.prompt}
        return json.dumps({"model": model, "messages": [message], "temperature": 0.0,
                           "max_tokens": self.max_new_tokens}).encode("utf-8")

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def _fail(self, message: str) -> None:
        with self._lock:
            self.last_error = self._redact(message)

    def _one(self, model: str, req: Request) -> Optional[str]:
        body, delay = self._body(model, req), 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(delay or self.backoff * 2 ** (attempt - 1))
                delay = 0.0
            try:
                http_req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
                with urllib.request.urlopen(http_req, timeout=self.timeout) as resp:
                    return _content(json.loads(resp.read().decode("utf-8")))
            except urllib.error.HTTPError as exc:
                detail = self._redact(exc.read(300).decode("utf-8", "replace").strip()) if exc.fp else ""
                exc.close()
                if exc.code not in RETRY_STATUS:
                    raise BackendError(
                        f"--endpoint {self.url} answered HTTP {exc.code} {exc.reason} for model {model!r}"
                        + (f": {detail}" if detail else "")
                        + (" (check the API key environment variable)" if exc.code in (401, 403) else "")
                    ) from None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.strip().replace(".", "", 1).isdigit():
                    delay = min(float(retry_after), MAX_RETRY_AFTER_S)
                self._fail(f"HTTP {exc.code} {exc.reason}")
            except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError,
                    http.client.HTTPException) as exc:
                self._fail(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}")
            except (ValueError, KeyError, IndexError, TypeError) as exc:  # 200 but not a chat completion
                self._fail(f"unexpected answer ({type(exc).__name__}: {exc})")
            logger.debug("request to %s failed (attempt %d): %s", self.url, attempt + 1, self.last_error)
        logger.warning("a request to %s failed %d times, last: %s", self.url, self.retries + 1, self.last_error)
        return None
