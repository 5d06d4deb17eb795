"""Optional human review: pause before the first generation so a person can edit the criteria or first prompt."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from gems.configs import GemsSettings
from gems.graph.state import GemsState
from gems.nodes.runtime import settings_of

REVIEW_HELP = (
    "Resume with {} (or null) to accept, or with {'criteria': [...], 'first_prompt': '...'} to replace either."
)


class ReviewError(ValueError):
    """The reviewer's resume value is not usable."""


def review(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Interrupt for review when `loop.human_review` is on; apply the reviewer's edits on resume.

    Everything before `interrupt` is read-only, so re-running the node on resume is safe.

    Returns:
        Replaced `criteria` and/or `current_prompt`, or nothing.
    """
    if not settings_of(runtime).loop.human_review:
        return {}
    decision = interrupt(
        {
            "prompt": state["prompt"],
            "first_prompt": state.get("current_prompt"),
            "criteria": state.get("criteria") or [],
            "skill": state.get("skill"),
            "help": REVIEW_HELP,
        }
    )
    if not decision:
        return {}
    if not isinstance(decision, dict) or set(decision) - {"criteria", "first_prompt"}:
        raise ReviewError(f"review answer must be an object with criteria and/or first_prompt; {REVIEW_HELP}")
    update: dict[str, Any] = {}
    if "criteria" in decision:
        criteria = decision["criteria"]
        if not isinstance(criteria, list) or not all(isinstance(q, str) and q.strip() for q in criteria):
            raise ReviewError("review criteria must be a list of non-empty questions")
        update["criteria"] = [q.strip() for q in criteria]
    if "first_prompt" in decision:
        prompt = decision["first_prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ReviewError("review first_prompt must be a non-empty string")
        update["current_prompt"] = prompt.strip()
        update["thought"] = "First prompt written by the reviewer."
    return update
