"""The reference GEMS generator protocol: `POST <url>?prompt=...` answered with PNG bytes."""

from __future__ import annotations

import time

import httpx

from gems.configs import GeneratorSettings
from gems.nodes.generators.base import GeneratorError, Rendered

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def post_with_retries(client: httpx.Client, what: str, max_retries: int, **request: object) -> httpx.Response:
    """POST with exponential backoff on connection errors, timeouts and 408/429/5xx; one-line errors."""
    delay = 0.5
    for attempt in range(max_retries + 1):
        last = attempt == max_retries
        try:
            response = client.post(**request)  # type: ignore[arg-type]
        except httpx.TimeoutException as exc:
            if last:
                raise GeneratorError(
                    f"{what} timed out after {client.timeout.read}s; raise generator.timeout_s"
                ) from exc
        except httpx.TransportError as exc:
            if last:
                raise GeneratorError(
                    f"cannot reach {what} ({type(exc).__name__}); start it or set GEMS_GENERATOR_URL"
                ) from exc
        else:
            if response.status_code < 400:
                return response
            if response.status_code not in RETRY_STATUS or last:
                detail = " ".join(response.text.split())[:200]
                raise GeneratorError(f"{what} answered HTTP {response.status_code}: {detail}")
        time.sleep(delay)
        delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")  # pragma: no cover


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
