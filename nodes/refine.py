"""Refiner role: write the next prompt from the original request and the trajectory so far."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from gems.configs import GemsSettings, context_settings
from gems.memory.state import GemsState
from gems.nodes.calls import Ask, Blocking, Steps, node
from gems.nodes.mllm import MLLMError
from gems.nodes.parsing import clean_prompt
from gems.nodes.prompts.refine import refine_system, refiner_parts
from gems.nodes.runtime import artifact_store, timed, usage_update
from gems.skills import registry_for

EMPTY_PROMPT_ERROR = "the refiner returned an empty prompt; check mllm.model and mllm.max_tokens"


def refine_steps(state: GemsState, runtime: Runtime[GemsSettings]) -> Steps:
    """Write the next round's prompt; the server's separate reasoning becomes the next round's thought.

    Args:
        state: `prompt` and `rounds`.
        runtime: the run's settings as context.

    Returns:
        `current_prompt`, `thought` and counters.
    """
    settings = context_settings(runtime.context)
    timings: dict[str, float] = {}
    loaded = (state.get("skill_trace") or {}).get("loaded") or []
    skills = []
    if settings.skills.to_refiner and loaded:
        # Off by default: in the paper only the first prompt sees the skill.
        registry = registry_for(settings)
        skills = [skill for name in loaded if (skill := registry.get(name)) is not None]
    system = refine_system(skills)
    with timed(timings, "refine"):
        parts = yield Blocking(lambda: refiner_parts(state, settings, artifact_store(settings)))
        reply = yield Ask(settings.mllm, system, parts)
    new_prompt = clean_prompt(reply.text)
    if not new_prompt:
        raise MLLMError(EMPTY_PROMPT_ERROR)
    update: dict[str, Any] = {}
    cap = settings.loop.max_prompt_chars
    if len(new_prompt) > cap:  # a runaway answer must not break the generator call (URLs, context windows)
        update["warnings"] = [f"the refiner wrote {len(new_prompt)} characters; cut to {cap} (loop.max_prompt_chars)"]
        new_prompt = new_prompt[:cap].rsplit(" ", 1)[0]
    return {
        **update,
        "current_prompt": new_prompt,
        "thought": reply.thought,
        "mllm_calls": 1,
        "timings": timings,
        "usage": usage_update(reply.usage),
    }


refine = node(refine_steps)
