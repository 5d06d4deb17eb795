"""Compressor role: distil the round just failed into a short experience for the refiner."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from gems.configs import GemsSettings, context_settings
from gems.memory.state import GemsState
from gems.memory.trajectory import MODE_LAYERS
from gems.nodes.calls import ask, blocking
from gems.nodes.prompts.compress import COMPRESS_SYSTEM, compressor_parts
from gems.nodes.runtime import artifact_store, timed, usage_update


def truncate_words(text: str, max_words: int) -> str:
    """Keep at most `max_words` words (models overshoot word limits now and then)."""
    words = text.split()
    return " ".join(words[:max_words])


async def compress(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Write the experience of the latest round; a no-op in memory modes that do not use experiences.

    Args:
        state: `rounds` (the latest one gets its `experience`).
        runtime: the run's settings as context.

    Returns:
        The latest round's `experience` (merged into `rounds`) and counters, or nothing.
    """
    settings = context_settings(runtime.context)
    if not MODE_LAYERS[settings.memory.mode]["experience"] or settings.loop.compress == "merged":
        return {}  # no experiences kept, or the refiner writes them with the next prompt (loop.compress: merged)
    latest = state["rounds"][-1]
    timings: dict[str, float] = {}
    with timed(timings, "compress"):
        parts = await blocking(compressor_parts, state, settings, artifact_store(settings))
        system = COMPRESS_SYSTEM.format(max_words=settings.loop.experience_max_words)
        reply = await ask(settings.mllm, system, parts)
    experience = truncate_words(reply.text, settings.loop.experience_max_words)
    return {
        "rounds": [{"round": latest["round"], "experience": experience}],
        "mllm_calls": 1,
        "timings": timings,
        "usage": usage_update(reply.usage),
    }
