"""The reference GEMS generator protocol: `POST <url>?prompt=...` answered with PNG bytes."""

from __future__ import annotations

import time
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from gems.configs import GeneratorSettings
from gems.nodes.generators.base import GeneratorError, Rendered

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class _TransientStatus(Exception):
    """An HTTP status worth retrying; carries the response for the final error message."""

    def __init__(self, response: httpx.Response):
        super().__init__(response.status_code)
        self.response = response


def _post(client: httpx.Client, request: dict[str, Any]) -> httpx.Response:
    response = client.post(**request)
    if response.status_code in RETRY_STATUS:
        raise _TransientStatus(response)
    return response


def post_with_retries(client: httpx.Client, what: str, max_retries: int, **request: Any) -> httpx.Response:
    """POST with exponential backoff (0.5 s doubling, at most 8 s) on connection errors, timeouts and 408/429/5xx.

    Raises:
        GeneratorError: one line saying what failed and what to do.
    """
    retrying = Retrying(
        stop=stop_after_attempt(max_retries + 1),
        wait=wait_exponential(multiplier=0.5, max=8.0),
        retry=retry_if_exception_type((httpx.TransportError, _TransientStatus)),
        reraise=True,
    )
    try:
        response = retrying(_post, client, request)
    except httpx.TimeoutException as exc:
        raise GeneratorError(f"{what} timed out after {client.timeout.read}s; raise generator.timeout_s") from exc
    except httpx.TransportError as exc:
        raise GeneratorError(f"cannot reach {what} ({type(exc).__name__}); start it or set GEMS_GENERATOR_URL") from exc
    except _TransientStatus as exc:
        response = exc.response
    if response.status_code >= 400:
        raise GeneratorError(f"{what} answered HTTP {response.status_code}: {' '.join(response.text.split())[:200]}")
    return response


class HttpGenerator:
    """Client for existing GEMS generator servers; `generator.call_kwargs` become extra query parameters."""

    backend = "http"

    def __init__(self, settings: GeneratorSettings):
        if not settings.url:
            raise GeneratorError("generator.backend is http but generator.url is not set (or GEMS_GENERATOR_URL)")
        self.settings = settings
        self.client = httpx.Client(timeout=settings.timeout_s)

    def render(self, prompt: str, seed: int) -> Rendered:
        s = self.settings
        params = {"prompt": prompt, **{k: str(v) for k, v in s.call_kwargs.items()}}
        started = time.perf_counter()
        response = post_with_retries(self.client, f"generator server {s.url}", s.max_retries, url=s.url, params=params)
        busy = time.perf_counter() - started
        # The reference protocol draws its own seed; servers may report it in a header.
        reported = response.headers.get("x-seed")
        meta = {
            "backend": self.backend,
            "model": s.model or response.headers.get("x-model"),
            "seed": int(reported) if reported and reported.lstrip("-").isdigit() else None,
            "steps": s.steps,
            "guidance_scale": s.guidance_scale,
            "busy_s": busy,
        }
        return Rendered(data=response.content, meta=meta)
