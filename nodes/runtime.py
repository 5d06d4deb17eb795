"""Helpers every node uses: the run's settings from the graph context, the artifact store, timing."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from langgraph.runtime import Runtime

from gems.configs import GemsSettings, load_settings
from gems.configs.settings import is_complete, overlay
from gems.memory.artifacts import ArtifactStore


@functools.lru_cache(maxsize=1)
def _settings_from_env() -> GemsSettings:
    return load_settings()


def settings_of(runtime: Runtime[GemsSettings] | None) -> GemsSettings:
    """Return the run's settings: the context if given, else settings from `GEMS_CONFIG` and `GEMS_*`."""
    return context_settings(getattr(runtime, "context", None))


def context_settings(context: Any) -> GemsSettings:
    """Settings from a graph context value (a `GemsSettings`, a dict from a server, or None).

    A partial context (say `{"loop": {"max_rounds": 2}}` sent to the Agent Server) overlays the settings from
    `GEMS_CONFIG` and `GEMS_*`; settings from `load_settings` are whole and used as they are.
    """
    if isinstance(context, dict) and context:
        context = GemsSettings.model_validate(context)
    if isinstance(context, GemsSettings):
        return context if is_complete(context) else overlay(_settings_from_env(), context)
    return _settings_from_env()


def artifact_store(settings: GemsSettings) -> ArtifactStore:
    return ArtifactStore(settings.artifacts_dir)


@contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall seconds to `timings[key]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = round(timings.get(key, 0.0) + time.perf_counter() - start, 6)


def usage_update(*usages: dict[str, int]) -> dict[str, float]:
    """Sum token usage dicts into the state's `usage` counter."""
    total: dict[str, float] = {}
    for usage in usages:
        for key in ("input_tokens", "output_tokens", "image_parts"):
            if key in usage:
                total[key] = total.get(key, 0) + usage[key]
    return total
