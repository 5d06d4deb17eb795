"""Helpers every node uses: the artifact store, timing, token usage."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from gems.configs import GemsSettings
from gems.memory.artifacts import ArtifactStore


def artifact_store(settings: GemsSettings) -> ArtifactStore:
    return ArtifactStore(settings.artifacts_dir, max_pixels=settings.storage.max_pixels)


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
