"""Intake: take the request (a prompt, or the last human message of a chat) and start the run that answers it.

The first node of every run. It reads the request's text and attached images (stored as files, shown by signed
URL), pins the run's options in state so a resume runs as started, and on a thread that already answered a request
starts afresh: the earlier run becomes a `turn`, the per-run channels are reset, and a follow-up message ("now make
the cube blue") is made into a request that stands on its own, from the earlier request and how its image turned
out. With an editor configured, such a follow-up (or a request with an attached image) starts by editing that image.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from gems.configs import GemsSettings, UsageError, context_settings
from gems.configs.loading import checked_options, pinned_options
from gems.memory.state import GemsState, ImageRef, Turn
from gems.nodes.calls import ask, blocking
from gems.nodes.chat import EMPTY_REQUEST, request_parts, run_links, stored_request
from gems.nodes.mllm import image_part, text_part
from gems.nodes.parsing import clean_prompt
from gems.nodes.prompts import bullets
from gems.nodes.prompts.intake import FOLLOW_UP_SYSTEM, FOLLOW_UP_USER
from gems.nodes.runtime import artifact_store, timed, usage_update

# What one run writes; a new request on the thread starts them empty (accumulating channels overwritten).
_RESET: dict[str, Any] = {
    "rounds": Overwrite([]), "verdicts": Overwrite([]), "warnings": Overwrite([]),
    "mllm_calls": Overwrite(0), "generator_calls": Overwrite(0), "timings": Overwrite({}), "usage": Overwrite({}),
    "final": None, "success": None, "criteria": None, "round": 0, "candidates": [], "action": None, "skill": None,
    "skill_trace": {}, "lessons": [], "lesson_id": None, "current_prompt": None, "thought": None, "verifiers": [],
    "accepted_round": None, "reviewer_prompt": None,
}  # fmt: skip
_RUN_KEYS = ("criteria", "rounds", "final", "skill_trace", "round")


async def intake(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Read the request and start its run.

    Args:
        state: `prompt` or `messages` (the last human message not yet answered is the request); on a thread with an
            earlier run, that run's state; `options` when the caller pinned run options in the input.
        runtime: the run's settings as context.

    Returns:
        `prompt`, `request_id`, `references`, the pinned options, the request as a message, and on a new request
        after an earlier one: the earlier `turn`, the per-run channels reset, and an edit for round 1 when fitting.

    Raises:
        UsageError: no request, an empty one, or bad attachments or options; one line.
    """
    settings = context_settings(runtime.context)
    links = await run_links(settings)
    store = artifact_store(settings)
    update: dict[str, Any] = {}
    # Step 1: the request: the newest human message nobody answered yet, else the prompt.
    messages = state.get("messages") or []
    last = messages[-1] if messages else None
    answered = {t.get("request_id") for t in state.get("turns") or []} | {state.get("request_id")}
    chat = isinstance(last, HumanMessage) and last.id not in answered
    references: list[ImageRef] = []
    if chat:
        assert isinstance(last, HumanMessage)
        text, blocks = request_parts(last)
        human, refs = await blocking(stored_request, last, blocks, store, links)
        references = [ImageRef(**ref) for ref in refs]  # type: ignore[typeddict-item]
        request_id = last.id
        if human is not last:
            update["messages"] = [human]
    else:
        text = (state.get("prompt") or "").strip()
        request_id = f"request-{uuid.uuid4().hex[:12]}"
        if text:
            update["messages"] = [HumanMessage(content=text, id=request_id)]
    if not text:
        raise UsageError(EMPTY_REQUEST)
    if len(text) > settings.loop.max_prompt_chars:
        raise UsageError(f"the request has {len(text)} characters; at most {settings.loop.max_prompt_chars}")
    said = text  # as the person wrote it: the instruction when round 1 edits an image

    # Step 2: a thread that answered before: keep that answer as a turn, start this run afresh.
    earlier = _earlier_turn(state)
    if any(state.get(key) for key in _RUN_KEYS):
        update.update(_RESET)
    if earlier is not None:
        update["turns"] = [earlier]
    timings: dict[str, float] = {}
    if chat and earlier is not None:
        with timed(timings, "intake"):
            reply = await ask(settings.mllm, FOLLOW_UP_SYSTEM, await blocking(_follow_up, earlier, text, settings))
        text = clean_prompt(reply.text)[: settings.loop.max_prompt_chars] or text
        update.update(mllm_calls=Overwrite(1), usage=Overwrite(usage_update(reply.usage)), timings=Overwrite(timings))

    # Step 3: the run's options as it starts, and where round 1 starts from.
    given = state.get("options")
    options = checked_options(given) if given is not None else pinned_options(settings)
    base = references[0] if references else (earlier or {}).get("image") if chat else None
    if base and settings.editor.backend != "none":
        update["action"] = {"round": 1, "mode": "edit", "base_round": None, "base_image": base}
        update["current_prompt"] = said
    return {**update, **options, "prompt": text, "request_id": request_id, "references": references,
            "owner": links.tenant}  # fmt: skip


def _earlier_turn(state: GemsState) -> Turn | None:
    """The finished run on this thread, as a turn; None when there is none."""
    final = state.get("final")
    if not final or not state.get("prompt"):
        return None
    chosen: Mapping[str, Any] = next((r for r in state.get("rounds") or [] if r.get("round") == final.get("round")), {})
    return Turn(
        request=state["prompt"],
        request_id=state.get("request_id"),
        image=ImageRef(**(final.get("image") or {})),
        passed=list(chosen.get("passed") or []),
        failed=list(chosen.get("failed") or []),
        success=state.get("success"),
    )


def _follow_up(earlier: Turn, message: str, settings: GemsSettings) -> list[dict[str, Any]]:
    parts = [
        text_part(
            FOLLOW_UP_USER.format(
                previous=earlier.get("request"),
                passed=bullets(earlier.get("passed") or []),
                failed=bullets(earlier.get("failed") or []),
                message=message,
            )
        )
    ]
    image = earlier.get("image") or {}
    if image.get("sha256"):
        parts.append(image_part(artifact_store(settings).data_url(image, settings.mllm.image_max_side)))
    return parts
