"""Optional human review: pause before the first generation so a person can edit the criteria or first prompt."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from gems.configs import GemsSettings, context_settings
from gems.memory.state import GemsState

REVIEW_HELP = (
    "Resume with {} (or null) to accept, or with {'criteria': [...], 'first_prompt': '...'} to replace either."
)


def parse_review(decision: Any) -> tuple[dict[str, Any], str | None]:
    """The state update a reviewer's answer asks for, or an error saying what is wrong with it."""
    if not decision:
        return {}, None
    if not isinstance(decision, dict) or set(decision) - {"criteria", "first_prompt"}:
        return {}, f"the answer must be an object with criteria and/or first_prompt. {REVIEW_HELP}"
    update: dict[str, Any] = {}
    if "criteria" in decision:
        criteria = decision["criteria"]
        if not isinstance(criteria, list) or not all(isinstance(q, str) and q.strip() for q in criteria):
            return {}, "criteria must be a list of non-empty questions"
        update["criteria"] = [q.strip() for q in criteria]
    if "first_prompt" in decision:
        prompt = decision["first_prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            return {}, "first_prompt must be a non-empty string"
        update["current_prompt"] = prompt.strip()
        update["thought"] = "First prompt written by the reviewer."
    return update, None


def review(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Interrupt for review when `loop.human_review` is on; apply the reviewer's edits on resume.

    Everything before `interrupt` is read-only, so re-running the node on resume is safe. An unusable answer
    interrupts again with an `error` field (each resume answers the next interrupt), so nothing is lost.

    Returns:
        Replaced `criteria` and/or `current_prompt`, or nothing.
    """
    # The flag recorded at plan time: a resume that omits the option still applies the reviewer's edits.
    if not state.get("human_review", context_settings(runtime.context).loop.human_review):
        return {}
    payload = {
        "prompt": state["prompt"],
        "first_prompt": state.get("current_prompt"),
        "criteria": state.get("criteria") or [],
        "skill": state.get("skill"),
        "help": REVIEW_HELP,
    }
    update, error = parse_review(interrupt(payload))
    while error is not None:
        update, error = parse_review(interrupt({**payload, "error": error}))
    return update
