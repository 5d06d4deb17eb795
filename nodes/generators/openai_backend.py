"""OpenAI-compatible `/v1/images/generations` (OpenAI, vLLM-Omni and others), answered with `b64_json`."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import httpx

from gems.configs import GeneratorSettings
from gems.configs.errors import shown_url
from gems.nodes.generators.base import GeneratorError, Rendered
from gems.nodes.generators.http_backend import apost_with_retries, async_clients


class OpenAIImagesGenerator:
    """Image generations endpoint client; open servers also get seed, steps and guidance."""

    backend = "openai"

    def __init__(self, settings: GeneratorSettings):
        if not settings.url:
            raise GeneratorError("generator.backend is openai but generator.url is not set (base URL ending in /v1)")
        if not settings.model:
            raise GeneratorError("generator.backend is openai but generator.model is not set")
        self.settings = settings
        self.clients = async_clients(settings.timeout_s, {"Authorization": f"Bearer {settings.resolved_api_key()}"})
        # Image URLs in an answer may point anywhere (a CDN, or a hostile server): fetched without the key.
        self.plain = async_clients(settings.timeout_s)
        self.url = settings.url.rstrip("/") + "/images/generations"
        # OpenAI's own API rejects parameters it does not know; open servers (vLLM-Omni) take them.
        self.hosted_openai = "api.openai.com" in settings.url

    def _body(self, prompt: str, seed: int) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {"model": s.model, "prompt": prompt, "n": 1}
        if s.width and s.height:
            body["size"] = f"{s.width}x{s.height}"
        # gpt-image models always answer b64_json and refuse the parameter.
        if not (s.model or "").startswith("gpt-image"):
            body["response_format"] = "b64_json"
        if not self.hosted_openai:
            body["seed"] = seed
            if s.steps is not None:
                body["num_inference_steps"] = s.steps
            if s.guidance_scale is not None:
                body["guidance_scale"] = s.guidance_scale
            if s.negative_prompt is not None:
                body["negative_prompt"] = s.negative_prompt
        body.update(s.call_kwargs)
        return body

    async def render(self, prompt: str, seeds: list[int]) -> list[Rendered]:
        """One request per seed, sent together."""
        return list(await asyncio.gather(*(self._one(prompt, seed) for seed in seeds)))

    async def _one(self, prompt: str, seed: int) -> Rendered:
        body = self._body(prompt, seed)
        started = time.perf_counter()
        data = await self._image(f"image endpoint {shown_url(self.url)}", json=body)
        return self._rendered(data, body, time.perf_counter() - started)

    async def _image(self, what: str, **request: Any) -> bytes:
        """POST `request` to the endpoint (with retries) and return the image of `data[0]`, fetched if a URL."""
        response = await apost_with_retries(
            self.clients.get(), what, self.settings.max_retries, url=self.url, **request
        )
        item = self._item(response)
        url = item.get("url")
        return (await self.plain.get().get(url)).content if url else base64.b64decode(item["b64_json"])

    def _item(self, response: httpx.Response) -> dict[str, Any]:
        """`data[0]` with either `b64_json` or `url`."""
        try:
            item = response.json()["data"][0]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise GeneratorError(
                f"image endpoint {shown_url(self.url)} answered without data[0]: {response.text[:120]!r}"
            ) from exc
        if isinstance(item, dict) and item.get("b64_json"):
            return {"b64_json": item["b64_json"]}
        if isinstance(item, dict) and item.get("url"):
            return {"url": item["url"]}
        raise GeneratorError(f"image endpoint {shown_url(self.url)} answered neither b64_json nor url")

    def _rendered(self, data: bytes, body: dict[str, Any], busy: float) -> Rendered:
        meta = {
            "busy_s": busy,
            "backend": self.backend,
            "model": self.settings.model,
            "seed": body.get("seed"),
            "steps": body.get("num_inference_steps"),
            "guidance_scale": body.get("guidance_scale"),
        }
        return Rendered(data=data, meta=meta)
