"""Helpers every node uses: the artifact store, timing, token usage."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from langgraph.config import get_config

from gems.configs import GemsSettings, UsageError
from gems.configs.loading import checked_options
from gems.configs.settings import PINNED
from gems.memory.artifacts import ArtifactStore
from gems.memory.links import tenant_of


def lesson_settings(settings: GemsSettings) -> GemsSettings:
    """Settings whose lessons are the caller's own: under the Agent Server with keys, the caller's key name is the
    tenant (`gems serve` sets `memory.tenant` itself); local use (`anonymous`) and the single shared key do not."""
    try:
        caller = (get_config().get("configurable") or {}).get("langgraph_auth_user_id")
    except RuntimeError:  # outside a graph run
        return settings
    tenant = tenant_of(caller)
    if settings.memory.tenant or not tenant:
        return settings
    return settings.model_copy(update={"memory": settings.memory.model_copy(update={"tenant": tenant})})


def pinned(state: Mapping[str, Any], settings: GemsSettings) -> dict[str, Any]:
    """The run's options as it started (kept in state), each within its bounds; the settings' own for any missing or
    out of bounds (a client's state edit cannot lift a run past the limits the settings model defines)."""
    out = {key: getattr(settings.loop, key) for key in PINNED}
    for key in PINNED:
        if key not in state:
            continue
        if state[key] is None:  # only "no seed" means something as None
            out["seed"] = None if key == "seed" else out["seed"]
            continue
        with contextlib.suppress(UsageError):  # out of bounds: the settings' value stands
            out.update(checked_options({key: state[key]}))
    return out


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
