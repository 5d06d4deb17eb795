"""Text-to-image backends behind one interface: `render(prompt, seed) -> Rendered`; editors in `edit.py`.

Backends: `diffusers` (local pipelines), `http` (the reference GEMS generator protocol) and `openai`
(`/v1/images/generations`, also vLLM-Omni). torch and diffusers load only when a diffusers pipeline does.
"""

from __future__ import annotations

import threading

from gems.configs import GeneratorSettings
from gems.configs.loading import cache_key
from gems.nodes.generators.base import Generator, GeneratorError, Rendered
from gems.nodes.generators.diffusers_backend import DiffusersGenerator  # torch/diffusers load on first render
from gems.nodes.generators.edit import Editor, get_editor
from gems.nodes.generators.http_backend import HttpGenerator
from gems.nodes.generators.openai_backend import OpenAIImagesGenerator
from gems.nodes.generators.presets import EDIT_PRESETS, PRESETS, editor_settings, effective_settings

_cache: dict[str, Generator] = {}
_cache_lock = threading.Lock()


def _make(settings: GeneratorSettings) -> Generator:
    if settings.backend == "diffusers":
        return DiffusersGenerator(settings)
    if settings.backend == "http":
        return HttpGenerator(settings)
    if settings.backend == "openai":
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


__all__ = [
    "EDIT_PRESETS",
    "PRESETS",
    "Editor",
    "Generator",
    "GeneratorError",
    "Rendered",
    "editor_settings",
    "effective_settings",
    "get_editor",
    "get_generator",
]
