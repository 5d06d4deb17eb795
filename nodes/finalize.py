"""Finalize: return the image that passed everything, or else the one that passed the most criteria."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from gems.configs import GemsSettings, context_settings
from gems.configs.errors import short
from gems.memory.state import GemsState
from gems.memory.trajectory import best_round
from gems.nodes.chat import final_message, run_links

NO_CRITERIA_WARNING = "the decomposer found no criteria: one image from the request as written, not verified"


async def finalize(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Pick the run's result and write the answer.

    Args:
        state: `rounds`, `criteria`, `candidates`; `accepted_round` when a reviewer took a round's image.
        runtime: the run's settings as context (for the answer's links).

    Returns:
        `final` (round, image, passed and total counts), `success`, and the final message.
    """
    criteria = state.get("criteria") or []
    rounds = state.get("rounds") or []
    links = await run_links(context_settings(runtime.context))
    turn = len(state.get("turns") or []) + 1
    if not criteria:
        # Nothing to check: the single generation from the original prompt is the answer, unverified; not a success.
        image = (state.get("candidates") or [{}])[0]
        final = {"round": state.get("round", 1), "image": image, "passed": 0, "total": 0}
        return {
            "final": final,
            "success": None,
            "warnings": [NO_CRITERIA_WARNING],
            "messages": [final_message(turn, state, final, links)],
        }
    # Verifier calls that failed count as fails; say so, so a run of errors does not pass for a hard prompt.
    errors = [v for v in state.get("verdicts") or [] if v.get("error") and not v.get("answer")]
    first = str(errors[0].get("error")) if errors else ""
    warnings = [f"{len(errors)} verifier calls failed (counted as fails): {short(first, 160)}"] if errors else []
    last = rounds[-1]
    accepted = next((r for r in rounds if r.get("round") == state.get("accepted_round")), None)
    chosen = accepted or (last if not last.get("failed") else best_round(rounds))
    assert chosen is not None
    final = {
        "round": chosen["round"],
        "image": chosen.get("image"),
        "passed": len(chosen.get("passed") or []),
        "total": len(criteria),
    }
    if accepted is not None:
        final["accepted"] = True  # a reviewer took this image
    update: dict[str, Any] = {
        "final": final,
        "success": not chosen.get("failed"),
        "messages": [final_message(turn, state, final, links)],
    }
    if warnings:
        update["warnings"] = warnings
    return update
