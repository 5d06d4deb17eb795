"""Refiner role: write the next prompt from the original request and the trajectory so far, or an edit instruction.

`loop.refine_mode`: `regenerate` (the paper) writes a new prompt every round; `edit` writes an instruction for the
editor to change an earlier image (`loop.edit_base`: the best round so far, or the last); `auto` lets the refiner
choose per round and records its one-line reason.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from gems.configs import GemsSettings, context_settings
from gems.memory.state import GemsState, RoundAction
from gems.memory.trajectory import MODE_LAYERS, best_round
from gems.nodes.calls import ask, blocking
from gems.nodes.chat import Links, next_step_line, round_message, run_links
from gems.nodes.compress import truncate_words
from gems.nodes.generators import editor_settings
from gems.nodes.mllm import MLLMError
from gems.nodes.parsing import clean_prompt, parse_choice, split_lesson
from gems.nodes.prompts.refine import (
    CHOOSE_ASK,
    CHOOSE_SYSTEM,
    EDIT_ASK,
    EDIT_SYSTEM,
    MERGED_LABELS,
    MERGED_LESSON,
    REFINE_ASK,
    refine_system,
    refiner_parts,
)
from gems.nodes.runtime import artifact_store, pinned, timed, usage_update
from gems.skills import registry_for

EMPTY_PROMPT_ERROR = "the refiner returned an empty prompt; check mllm.model and mllm.max_tokens"
REVIEWER_THOUGHT = "Prompt written by the reviewer after the previous round."
NO_ACTION_WARNING = "the refiner named no ACTION (edit or regenerate); its text was used as a new prompt"
NO_LESSON_WARNING = "the refiner wrote no LESSON (loop.compress merged); the round keeps no experience"


async def refine(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Write the next round's prompt or edit instruction; the server's separate reasoning becomes its thought.

    Args:
        state: `prompt` and `rounds`.
        runtime: the run's settings as context.

    Returns:
        `current_prompt` (the prompt, or the instruction for an edit), `action` (the next round's mode, base image
        and reason), `thought` and counters.

    Raises:
        ConfigError: refine_mode edit or auto with no editor configured.
    """
    settings = context_settings(runtime.context)
    mode = pinned(state, settings)["refine_mode"]  # as the run started
    rounds = list(state.get("rounds") or [])
    next_round = state.get("round", len(rounds)) + 1
    timings: dict[str, float] = {}
    if state.get("reviewer_prompt"):  # a person wrote the next prompt in the round's review
        text = str(state["reviewer_prompt"])
        action = RoundAction(round=next_round, mode="generate")
        return {"current_prompt": text, "action": action, "thought": REVIEWER_THOUGHT, "reviewer_prompt": None,
                "messages": _completed(state, await run_links(settings), action, text)}  # fmt: skip
    base = None
    if mode != "regenerate":
        editor_settings(settings)  # no editor: one line now, before any call is paid for
        chosen = best_round(rounds) if settings.loop.edit_base == "best" else (rounds[-1] if rounds else None)
        base = dict(chosen) if chosen is not None and (chosen.get("image") or {}).get("sha256") else None
    store = artifact_store(settings)
    if base is None:  # regenerate, or nothing to edit yet
        system, question = _regenerate_system(state, settings), REFINE_ASK
    elif mode == "edit":
        system, question = EDIT_SYSTEM, EDIT_ASK
    else:
        system, question = CHOOSE_SYSTEM, CHOOSE_ASK
    # loop.compress merged: this one call also writes the latest round's experience (no compressor call).
    merged = settings.loop.compress == "merged" and MODE_LAYERS[settings.memory.mode]["experience"]
    if merged:
        label = MERGED_LABELS["regenerate" if base is None else mode]
        system += MERGED_LESSON.format(max_words=settings.loop.experience_max_words, label=label)
    with timed(timings, "refine"):
        parts = await blocking(lambda: refiner_parts(state, settings, store, base=base, ask=question))
        reply = await ask(settings.mllm, system, parts)
    warnings: list[str] = []
    answer, update = reply.text, {}
    if merged:
        lesson, answer = split_lesson(answer)
        if lesson is None:
            warnings.append(NO_LESSON_WARNING)
        elif rounds:
            experience = truncate_words(lesson, settings.loop.experience_max_words)
            update["rounds"] = [{"round": rounds[-1]["round"], "experience": experience}]
            state = {**state, "rounds": [*rounds[:-1], {**rounds[-1], "experience": experience}]}  # type: ignore[typeddict-item]
    action = RoundAction(round=next_round, mode="generate")
    if base is not None and mode == "auto":
        choice, reason, text = parse_choice(answer)
        if choice is None:
            warnings.append(NO_ACTION_WARNING)
        action["reason"] = reason
        mode_now = "edit" if choice == "edit" else "generate"
    else:
        text = clean_prompt(answer)
        mode_now = "edit" if base is not None else "generate"
    if mode_now == "edit":
        assert base is not None
        action["mode"], action["base_round"], action["base_image"] = "edit", base["round"], base["image"]
    if not text:
        raise MLLMError(EMPTY_PROMPT_ERROR)
    cap = settings.loop.max_prompt_chars
    if len(text) > cap:  # a runaway answer must not break the generator call (URLs, context windows)
        warnings.append(f"the refiner wrote {len(text)} characters; cut to {cap} (loop.max_prompt_chars)")
        text = text[:cap].rsplit(" ", 1)[0]
    return {
        **update,
        **({"warnings": warnings} if warnings else {}),
        "current_prompt": text,
        "action": action,
        "thought": reply.thought,
        "messages": _completed(state, await run_links(settings), action, text),
        "mllm_calls": 1,
        "timings": timings,
        "usage": usage_update(reply.usage),
    }


def _completed(state: GemsState, links: Links, action: RoundAction, text: str) -> list[AIMessage]:
    """The latest round's message again (same id), now with its lesson and what comes next."""
    rounds = state.get("rounds") or []
    if not rounds:
        return []
    latest = rounds[-1]
    turn = len(state.get("turns") or []) + 1
    return [round_message(turn, latest, state.get("criteria") or [], links, next_step_line(action, text))]


def _regenerate_system(state: GemsState, settings: GemsSettings) -> str:
    loaded = (state.get("skill_trace") or {}).get("loaded") or []
    skills = []
    if settings.skills.to_refiner and loaded:
        # Off by default: in the paper only the first prompt sees the skill.
        registry = registry_for(settings)
        skills = [skill for name in loaded if (skill := registry.get(name)) is not None]
    return refine_system(skills)
