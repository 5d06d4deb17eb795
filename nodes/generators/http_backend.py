"""The reference GEMS generator protocol: `POST <url>?prompt=...` answered with PNG bytes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from gems.configs import GeneratorSettings
from gems.configs.errors import short, shown_url
from gems.memory.aio import PerLoop
from gems.nodes.generators.base import GeneratorError, Rendered

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class _TransientStatus(Exception):
    """An HTTP status worth retrying; carries the response for the final error message."""

    def __init__(self, response: httpx.Response):
        super().__init__(response.status_code)
        self.response = response


async def _apost(client: httpx.AsyncClient, request: dict[str, Any]) -> httpx.Response:
    response = await client.post(**request)
    if response.status_code in RETRY_STATUS:
        raise _TransientStatus(response)
    return response


def _retry_policy(max_retries: int) -> dict[str, Any]:
    return {
        "stop": stop_after_attempt(max_retries + 1),
        "wait": wait_exponential(multiplier=0.5, max=8.0),
        "retry": retry_if_exception_type((httpx.TransportError, _TransientStatus)),
        "reraise": True,
    }


async def apost_with_retries(client: httpx.AsyncClient, what: str, max_retries: int, **request: Any) -> httpx.Response:
    """POST with exponential backoff (0.5 s doubling, at most 8 s) on connection errors, timeouts and 408/429/5xx.

    Raises:
        GeneratorError: one line saying what failed and what to do.
    """
    try:
        response: httpx.Response = await AsyncRetrying(**_retry_policy(max_retries))(_apost, client, request)
    except (httpx.TransportError, _TransientStatus) as exc:
        response = _failure(exc, what, client.timeout.read)
    except httpx.InvalidURL as exc:
        raise GeneratorError(f"{what}: the request URL is invalid ({exc}); check generator.url") from exc
    return _checked(response, what)


def _failure(exc: Exception, what: str, timeout: float | None) -> httpx.Response:
    """The last transient status's response (reported by `_checked`), or a one-line error for a transport failure."""
    if isinstance(exc, _TransientStatus):
        return exc.response
    if isinstance(exc, httpx.TimeoutException):
        raise GeneratorError(f"{what} timed out after {timeout}s; raise generator.timeout_s") from exc
    raise GeneratorError(f"cannot reach {what} ({type(exc).__name__}); start it or set GEMS_GENERATOR_URL") from exc


def _checked(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code >= 400:
        raise GeneratorError(f"{what} answered HTTP {response.status_code}: {short(response.text, 200)}")
    return response


def async_clients(timeout: float, headers: dict[str, str] | None = None) -> PerLoop[httpx.AsyncClient]:
    """One pooled `httpx.AsyncClient` per event loop, with these options."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    return PerLoop(lambda: httpx.AsyncClient(timeout=timeout, headers=headers or {}, limits=limits))


class HttpGenerator:
    """Client for existing GEMS generator servers; `generator.call_kwargs` become extra query parameters."""

    backend = "http"

    def __init__(self, settings: GeneratorSettings):
        if not settings.url:
            raise GeneratorError("generator.backend is http but generator.url is not set (or GEMS_GENERATOR_URL)")
        self.settings = settings
        # The reference servers take no key; one set for a keyed server (gems serve-generator) goes as Bearer.
        headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"} if settings.api_key else {}
        self.clients = async_clients(settings.timeout_s, headers)

    def _request(self, prompt: str, seed: int) -> dict[str, Any]:
        # `seed` is an extra the reference servers ignore (they draw their own); gems serve-generator honours it.
        params = {"prompt": prompt, "seed": str(seed), **{k: str(v) for k, v in self.settings.call_kwargs.items()}}
        return {"url": self.settings.url, "params": params}

    async def render(self, prompt: str, seeds: list[int]) -> list[Rendered]:
        """One request per seed, sent together (a batching server, gems serve-generator, renders them at once)."""
        return list(await asyncio.gather(*(self._one(prompt, seed) for seed in seeds)))

    async def _one(self, prompt: str, seed: int) -> Rendered:
        s = self.settings
        started = time.perf_counter()
        response = await apost_with_retries(
            self.clients.get(), f"generator server {shown_url(s.url)}", s.max_retries, **self._request(prompt, seed)
        )
        return self._rendered(response, time.perf_counter() - started)

    def _rendered(self, response: httpx.Response, busy: float) -> Rendered:
        s = self.settings
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
