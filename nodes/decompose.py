"""Decomposer role: turn the original prompt into yes/no visual criteria, checked every round."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from gems.configs import GemsSettings, context_settings
from gems.configs.settings import MAX_CRITERIA
from gems.memory.state import GemsState
from gems.nodes.calls import ask
from gems.nodes.mllm import MLLMError
from gems.nodes.parsing import CriteriaParseError, parse_criteria
from gems.nodes.prompts.decompose import DECOMPOSE_SYSTEM, DECOMPOSE_USER, REPAIR_USER
from gems.nodes.runtime import timed, usage_update

CRITERIA_ERROR = "the decomposer did not return a JSON list of questions after one retry ({detail}); check mllm.model"


async def decompose(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Ask for criteria of the original prompt; one repair retry, then a clear error.

    Args:
        state: needs `prompt` (the user's, never the skill-enhanced one).
        runtime: the run's settings as context.

    Returns:
        `criteria` (possibly empty: one generation from the original prompt then follows) and counters.

    Raises:
        MLLMError: when the answer is still not a JSON list after the retry.
    """
    settings = context_settings(runtime.context)
    prompt = state["prompt"]
    timings: dict[str, float] = {}
    with timed(timings, "decompose"):
        reply = await ask(settings.mllm, DECOMPOSE_SYSTEM, DECOMPOSE_USER.format(prompt=prompt))
        usages, calls = [reply.usage], 1
        try:
            criteria = parse_criteria(reply.text)
        except CriteriaParseError:
            # Step 2: one repair round with the unreadable answer shown back.
            retry = await ask(settings.mllm, DECOMPOSE_SYSTEM, REPAIR_USER.format(prompt=prompt, bad=reply.text[:2000]))
            usages.append(retry.usage)
            calls += 1
            try:
                criteria = parse_criteria(retry.text)
            except CriteriaParseError as exc:
                raise MLLMError(CRITERIA_ERROR.format(detail=exc)) from None
    update: dict[str, Any] = {"mllm_calls": calls, "timings": timings, "usage": usage_update(*usages)}
    cap = settings.loop.max_criteria or MAX_CRITERIA
    if len(criteria) > cap:
        update["warnings"] = [
            f"the decomposer wrote {len(criteria)} criteria; kept the first {cap} (loop.max_criteria)"
        ]
        criteria = criteria[:cap]
    return {"criteria": criteria, **update}
