"""OpenAI-compatible `/v1/images/generations` (OpenAI, vLLM-Omni and others), answered with `b64_json`."""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import httpx

from gems.configs import GeneratorSettings
from gems.nodes.generators.base import GeneratorError, Rendered
from gems.nodes.generators.http_backend import post_with_retries


class OpenAIImagesGenerator:
    """Image generations endpoint client; open servers also get seed, steps and guidance."""

    backend = "openai"

    def __init__(self, settings: GeneratorSettings):
        if not settings.url:
            raise GeneratorError("generator.backend is openai but generator.url is not set (base URL ending in /v1)")
        if not settings.model:
            raise GeneratorError("generator.backend is openai but generator.model is not set")
        self.settings = settings
        key = (
            settings.api_key.get_secret_value()
            if settings.api_key
            else os.environ.get("GEMS_GENERATOR_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        )
        self.client = httpx.Client(timeout=settings.timeout_s, headers={"Authorization": f"Bearer {key}"})
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

    def render(self, prompt: str, seed: int) -> Rendered:
        s = self.settings
        body = self._body(prompt, seed)
        started = time.perf_counter()
        response = post_with_retries(self.client, f"image endpoint {self.url}", s.max_retries, url=self.url, json=body)
        try:
            item = response.json()["data"][0]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise GeneratorError(
                f"image endpoint {self.url} answered without data[0]: {response.text[:120]!r}"
            ) from exc
        if item.get("b64_json"):
            data = base64.b64decode(item["b64_json"])
        elif item.get("url"):
            data = self.client.get(item["url"]).content
        else:
            raise GeneratorError(f"image endpoint {self.url} answered neither b64_json nor url")
        meta = {
            "busy_s": time.perf_counter() - started,
            "backend": self.backend,
            "model": s.model,
            "seed": body.get("seed"),
            "steps": body.get("num_inference_steps"),
            "guidance_scale": body.get("guidance_scale"),
        }
        return Rendered(data=data, meta=meta)
