"""Human review: before the first generation (`loop.human_review`) and after each round (`loop.review_rounds`).

Each review is a LangGraph `interrupt`. Its value says what is up for review and how to answer; the answer comes
back as the resume value. Answers are read liberally, so a person can reply from wherever they are:

- gems' own shape: `"accept"` (or `""`, `[]`, `{"accept": true}`) to go on as proposed; `{"criteria": [...],
  "first_prompt": "..."}` before the first round; `{"accept": true}` to end with the round's image,
  `{"next_prompt": "..."}` or `{"criteria": [...]}` after a round; `"continue"` to let the loop go on.
- LangChain's human-in-the-loop decisions, as Agent Chat UI sends them: `{"decisions": [{"type": "approve"}]}`,
  `{"type": "edit", "edited_action": {"name": ..., "args": {...the fields above}}}`, or `{"type": "reject",
  "message": "..."}` (the message is taken as the prompt to use instead).
- the older Agent Inbox responses (create-agent-chat-app's template): `[{"type": "accept" | "ignore" | "edit" |
  "response", "args": ...}]` (an edit's `args.args` holds the fields; a response's text is the prompt).

The interrupt value carries both inbox shapes (`action_requests`/`review_configs` and `action_request`/`config`)
beside gems' own fields, so either UI draws its review card.

LangGraph reads `{}` as an empty map of interrupt ids and fails on `None`, so in Python answer `"accept"`; the
Agent Server's auth handler turns a `{}` or `null` resume into `"accept"` for its clients.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from gems.configs import GemsSettings, context_settings
from gems.memory.state import GemsState
from gems.nodes.chat import run_links
from gems.nodes.runtime import pinned

REVIEW_HELP = 'Answer "accept" to go on as proposed, or {"criteria": [...], "first_prompt": "..."} to replace either.'
ROUND_HELP = (
    'Answer "continue" to let the loop go on, {"accept": true} to end with this round\'s image, or '
    '{"next_prompt": "..."} / {"criteria": [...]} to steer the next round.'
)
_SHOWN = {"round", "image_url", "passed", "failed"}  # read-only fields of a round's review
_ACCEPT_WORDS = {"", "accept", "accepted", "approve", "approved", "ok", "yes", "continue", "go on", "ignore"}


def _unwrap(decision: Any) -> tuple[str, Any]:
    """(kind, fields) from any accepted answer shape: kind is accept, edit, respond, reject or other."""
    if decision is None or (isinstance(decision, str | list | dict | tuple) and not decision):
        return "accept", {}
    if isinstance(decision, str):
        return ("accept", {}) if decision.strip().lower() in _ACCEPT_WORDS else ("respond", decision.strip())
    if isinstance(decision, list | tuple):  # Agent Inbox: a list with one response
        return _unwrap(decision[0]) if len(decision) == 1 else ("other", decision)
    if not isinstance(decision, Mapping):
        return "other", decision
    if isinstance(decision.get("decisions"), list) and decision["decisions"]:  # HITL middleware
        return _unwrap(decision["decisions"][0])
    kind = decision.get("type")
    if kind in ("accept", "approve", "ignore"):
        return "accept", {}
    if kind == "edit":
        edited = decision.get("args") or decision.get("edited_action") or {}
        return "edit", (edited.get("args") if isinstance(edited.get("args"), Mapping) else edited)
    if kind == "response":
        return "respond", decision.get("args")
    if kind == "reject":  # "not this, but...": a reason in words is the prompt to use instead
        reason = decision.get("message") or decision.get("args")
        return ("respond", reason.strip()) if isinstance(reason, str) and reason.strip() else ("reject", None)
    if decision.get("accept") is True or decision.get("action") in ("accept", "continue"):
        return "accept", {k: v for k, v in decision.items() if k not in ("accept", "action")}
    return "edit", decision


def _criteria(value: Any) -> tuple[list[str] | None, str | None]:
    if isinstance(value, str):  # a review form's text box: a JSON list as shown, or one question per line
        try:
            value = json.loads(value)
        except ValueError:
            value = [line.strip(" -") for line in value.splitlines() if line.strip(" -")]
    if not isinstance(value, list) or not value or not all(isinstance(q, str) and q.strip() for q in value):
        return None, "criteria must be a non-empty list of non-empty questions"
    return [q.strip() for q in value], None


def _text(value: Any, name: str) -> tuple[str | None, str | None]:
    if not isinstance(value, str) or not value.strip():
        return None, f"{name} must be a non-empty string"
    return value.strip(), None


def parse_review(decision: Any) -> tuple[dict[str, Any], str | None]:
    """The state update a reviewer's answer before the first round asks for, or what is wrong with it."""
    kind, fields = _unwrap(decision)
    if kind == "accept" and not fields:
        return {}, None
    if kind == "respond":  # a reply in words is the first prompt
        fields = {"first_prompt": fields}
    if kind == "reject" or not isinstance(fields, Mapping) or set(fields) - {"criteria", "first_prompt", "prompt"}:
        return {}, f"the answer must accept, or give criteria and/or first_prompt. {REVIEW_HELP}"
    update: dict[str, Any] = {}
    if "criteria" in fields:
        criteria, error = _criteria(fields["criteria"])
        if error:
            return {}, error
        update["criteria"] = criteria
    first = fields.get("first_prompt", fields.get("prompt"))
    if first is not None:
        prompt, error = _text(first, "first_prompt")
        if error:
            return {}, error
        update["current_prompt"] = prompt
        update["thought"] = "First prompt written by the reviewer."
    return update, None


def parse_round_review(decision: Any) -> tuple[dict[str, Any], str | None]:
    """The state update a reviewer's answer after a round asks for, or what is wrong with it."""
    kind, fields = _unwrap(decision)
    if kind == "accept" and isinstance(fields, Mapping) and not fields:
        wants_image = isinstance(decision, Mapping) and decision.get("accept") is True
        return ({"accept": True} if wants_image else {}), None
    if kind == "respond":
        fields = {"next_prompt": fields}
    if isinstance(fields, Mapping):  # an edited form echoes what was shown; an empty prompt means "not changed"
        fields = {k: v for k, v in fields.items() if k not in _SHOWN and not (k == "next_prompt" and v == "")}
    if kind == "reject" or not isinstance(fields, Mapping) or set(fields) - {"next_prompt", "criteria", "accept"}:
        return {}, f"the answer was not understood. {ROUND_HELP}"
    update: dict[str, Any] = {}
    if fields.get("accept") is True:
        update["accept"] = True
    if "criteria" in fields:
        criteria, error = _criteria(fields["criteria"])
        if error:
            return {}, error
        update["criteria"] = criteria
    if "next_prompt" in fields:
        prompt, error = _text(fields["next_prompt"], "next_prompt")
        if error:
            return {}, error
        update["reviewer_prompt"] = prompt
    return update, None


def _ask(payload: dict[str, Any], parse: Any) -> dict[str, Any]:
    """Interrupt until the answer parses; an unusable one interrupts again with the error (nothing is lost)."""
    update, error = parse(interrupt(payload))
    while error is not None:
        update, error = parse(interrupt({**payload, "error": error}))
    return update


def _inbox(action: str, args: dict[str, Any], description: str, help_text: str) -> dict[str, Any]:
    """An interrupt value Agent Chat UI draws as a review card (today's and the older inbox shape), with gems' own
    fields beside them for API clients."""
    text = f"{description}\n\n{help_text}"
    return {
        "action_requests": [{"name": action, "args": args, "description": text}],
        "review_configs": [{"action_name": action, "allowed_decisions": ["approve", "edit", "reject"]}],
        "action_request": {"action": action, "args": args},
        "config": {"allow_ignore": True, "allow_respond": True, "allow_edit": True, "allow_accept": True},
        "description": text,
        **args,
        "help": help_text,
    }


def review(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Interrupt for review when `loop.human_review` is on; apply the reviewer's edits on resume.

    Everything before `interrupt` is read-only, so re-running the node on resume is safe.

    Returns:
        Replaced `criteria` and/or `current_prompt`, or nothing.
    """
    # The flag recorded when the run started: a resume that omits the option still applies the reviewer's edits.
    if not pinned(state, context_settings(runtime.context))["human_review"]:
        return {}
    args = {"first_prompt": state.get("current_prompt"), "criteria": state.get("criteria") or []}
    description = f"Review the plan for: {state['prompt']}"
    payload = {**_inbox("review_plan", args, description, REVIEW_HELP), "prompt": state["prompt"],
               "skill": state.get("skill")}  # fmt: skip
    return _ask(payload, parse_review)


async def review_round(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """After a round that did not pass everything: a person accepts its image, steers the next round, or lets it go.

    Returns:
        `accepted_round` (the run ends with this round's image), `reviewer_prompt` (the next prompt, the refiner is
        not asked), replaced `criteria` for later rounds, or nothing.
    """
    record = (state.get("rounds") or [{}])[-1]
    links = await run_links(context_settings(runtime.context))
    image = record.get("image") or {}
    args: dict[str, Any] = {
        "round": record.get("round"),
        "image_url": links.image(image) if image.get("sha256") else None,
        "passed": record.get("passed") or [],
        "failed": record.get("failed") or [],
        "next_prompt": "",
        "criteria": state.get("criteria") or [],
    }
    description = f"Round {record.get('round')} passed {len(args['passed'])} of {len(args['criteria'])} criteria." + (
        f"\n\n![Round {record.get('round')}]({args['image_url']})" if args["image_url"] else ""
    )
    answer = _ask(_inbox("review_round", args, description, ROUND_HELP), parse_round_review)
    update: dict[str, Any] = {}
    if answer.get("accept"):
        update["accepted_round"] = record.get("round")
    if answer.get("reviewer_prompt"):
        update["reviewer_prompt"] = answer["reviewer_prompt"]
    if answer.get("criteria"):
        update["criteria"] = answer["criteria"]
    return update
