"""Learn: after the run, write its lesson to the run's store (`runtime.store`; one record per thread)."""

from __future__ import annotations

import logging
from typing import Any

from langgraph.config import get_config
from langgraph.runtime import Runtime

from gems.configs import GemsSettings, context_settings
from gems.memory.experiences import ExperienceStore, lesson_from_state
from gems.memory.state import GemsState
from gems.nodes.calls import blocking
from gems.nodes.runtime import lesson_settings, timed

log = logging.getLogger(__name__)


async def learn(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Store what this run taught; a store failure is recorded as a warning and never fails the run.

    Args:
        state: the finished trajectory.
        runtime: the run's settings as context.

    Returns:
        `lesson_id` (or a `warnings` entry), nothing when lessons are off or there was nothing to learn.
    """
    settings = lesson_settings(context_settings(runtime.context))
    if not settings.memory.lessons:
        return {}
    thread_id = str((get_config().get("configurable") or {}).get("thread_id") or "")
    lesson = lesson_from_state(dict(state), settings, thread_id)
    if lesson is None:
        return {}
    timings: dict[str, float] = {}
    try:
        with timed(timings, "learn"):
            lesson_id = await blocking(ExperienceStore(settings, runtime.store).add, lesson)
    except Exception as exc:  # the image is made; losing the lesson must not lose the run
        log.warning("could not store the lesson: %s", exc)
        return {"warnings": [f"lesson not stored: {exc}"], "timings": timings}
    return {"lesson_id": lesson_id, "timings": timings}
