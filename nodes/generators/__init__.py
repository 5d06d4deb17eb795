"""Text-to-image backends behind one interface: `render(prompt, seed) -> Rendered`.

Backends: `diffusers` (local pipelines), `http` (the reference GEMS generator protocol) and `openai`
(`/v1/images/generations`, also vLLM-Omni). Heavy imports happen only inside the backend that needs them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from gems.configs import GemsError, GeneratorSettings
from gems.configs.settings import cache_key
from gems.nodes.generators.presets import PRESETS, effective_settings


class GeneratorError(GemsError, RuntimeError):
    """The generator failed; the message is one line saying what to fix."""


@dataclass
class Rendered:
    """Encoded image bytes from a backend plus what produced them."""

    data: bytes
    meta: dict[str, Any] = field(default_factory=dict)


class Generator(Protocol):
    """What every backend implements."""

    backend: str

    def render(self, prompt: str, seed: int) -> Rendered:
        """Render one image for `prompt` with `seed` (backends that cannot seed record seed None)."""
        ...


_cache: dict[str, Generator] = {}
_cache_lock = threading.Lock()


def _make(settings: GeneratorSettings) -> Generator:
    if settings.backend == "diffusers":
        from gems.nodes.generators.diffusers_backend import DiffusersGenerator

        return DiffusersGenerator(settings)
    if settings.backend == "http":
        from gems.nodes.generators.http_backend import HttpGenerator

        return HttpGenerator(settings)
    if settings.backend == "openai":
        from gems.nodes.generators.openai_backend import OpenAIImagesGenerator

        return OpenAIImagesGenerator(settings)
    raise GeneratorError(f"unknown generator.backend {settings.backend!r}; use diffusers, http or openai")


def get_generator(settings: GeneratorSettings) -> Generator:
    """Return the process-wide generator for these settings; a diffusers pipeline loads once and is reused."""
    resolved = effective_settings(settings)
    key = cache_key(resolved)
    with _cache_lock:
        generator = _cache.get(key)
        if generator is None:
            generator = _make(resolved)
            _cache[key] = generator
        return generator


__all__ = ["PRESETS", "Generator", "GeneratorError", "Rendered", "effective_settings", "get_generator"]
