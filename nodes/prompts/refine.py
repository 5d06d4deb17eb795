"""Refiner prompts: the original request and the trajectory so far, as much as the memory mode keeps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gems.configs import GemsSettings
from gems.memory.artifacts import ArtifactStore
from gems.memory.trajectory import MODE_LAYERS
from gems.nodes.prompts import bullets, format_lessons, skill_block

REFINE_SYSTEM = """You write the next prompt for a text-to-image model that has not yet satisfied a user's request.
You see the original request and the attempts so far: each attempt's prompt, the image it produced, the
requirements it failed, and any lessons drawn from it.
Write one new prompt that
1. makes every failed requirement impossible to miss,
2. keeps what already worked, so nothing that passed breaks,
3. applies the lessons,
4. uses clear, concrete wording without contradictions,
and stays faithful to the original request. Return only the new prompt text."""

EDIT_SYSTEM = """You write one instruction for an image-editing model, to fix an image that nearly meets a request.
You see the original request, the attempts so far, and the image to edit with the requirements it passes and fails.
The instruction must
1. name each failed requirement and the concrete change that fixes it (a colour, a count, a word of text, a
   position, an object to add or remove),
2. tell the editor to leave everything else unchanged, naming what already passes so it stays,
3. ask for nothing the original request does not want.
Return only the instruction."""

CHOOSE_SYSTEM = """You decide how the next attempt at a user's image request is made: by editing an earlier image or
by drawing a new one from a new prompt. You see the original request, the attempts so far, and the image an edit
would start from with the requirements it passes and fails.
Edit when the failures are local and the layout is right: a wrong colour or attribute, a count that is off, text
spelled wrong, a small object to add or remove. Regenerate when the composition is wrong: objects missing from the
scene, the wrong arrangement, scene or style, or when edits have stopped helping.
Answer in exactly this form:
ACTION: edit or regenerate
REASON: one line
TEXT: for edit, the instruction (name what failed and how to fix it, say to keep everything else); for regenerate,
the complete new prompt"""

MERGED_LESSON = """

Before your answer, write the lesson of the latest attempt for the attempts to come: what failed and the likely
cause, what worked and must be kept, what to change. Answer in this form:
LESSON: the lesson, at most {max_words} words
{label}"""
MERGED_LABELS = {"regenerate": "PROMPT: the new prompt", "edit": "INSTRUCTION: the edit instruction",
                 "auto": "then ACTION, REASON and TEXT as asked"}  # fmt: skip

REFINE_SKILLS = """

Expert guidance to keep following:
{skills}"""

REFINE_REQUEST = """Original request (the intent every prompt must serve):
{prompt}"""

REFINE_ATTEMPT = """
## Attempt {round}"""
REFINE_EXPERIENCE = "Lesson from this attempt: {experience}"
REFINE_THOUGHT = "Reasoning behind this prompt: {thought}"
REFINE_PROMPT = """Prompt used:
{prompt}"""
REFINE_EDITED = """Made by editing the image of attempt {base} with the instruction:
{prompt}"""
REFINE_IMAGE = "Image it produced:"
REFINE_FAILED = """Requirements it failed:
{failed}"""
REFINE_ASK = """
Write the next prompt."""
EDIT_BASE = """
## The image to edit (attempt {round})"""
EDIT_BASE_SHOWN = "(attempt {round}'s image, shown above)"
EDIT_BASE_PASSED = """It passes:
{passed}"""
EDIT_ASK = """
Write the edit instruction."""
CHOOSE_ASK = """
Choose edit or regenerate, and write the text."""


def refine_system(skills: list[Any]) -> str:
    """The refiner's system prompt, with loaded skills' instructions when `skills.to_refiner` is on."""
    return REFINE_SYSTEM + (REFINE_SKILLS.format(skills=skill_block(skills)) if skills else "")


def refiner_parts(
    state: Mapping[str, Any],
    settings: GemsSettings,
    store: ArtifactStore,
    base: Mapping[str, Any] | None = None,
    ask: str = REFINE_ASK,
) -> list[dict[str, Any]]:
    """The refiner's user message parts (text and image blocks) from the trajectory, oldest round first.

    `memory.mode` picks the layers (`MODE_LAYERS`: the paper's ablation rows); `memory.image_window` bounds how many
    latest rounds send their image. `base`: the round an edit would start from, shown last with its image and what
    it passes and fails (refine_mode edit | auto).
    """
    layers = MODE_LAYERS[settings.memory.mode]
    rounds = list(state.get("rounds") or [])
    if not layers["history"]:
        rounds = rounds[-1:]
    window = settings.memory.image_window
    with_image = {r["round"] for r in (rounds[-window:] if window is not None and window > 0 else rounds)}
    if window == 0:
        with_image = set()

    parts: list[dict[str, Any]] = [{"type": "text", "text": REFINE_REQUEST.format(prompt=state["prompt"])}]
    lessons = state.get("lessons") or []
    if lessons and settings.memory.lessons_to_refiner:
        parts.append({"type": "text", "text": format_lessons(lessons)})
    shown: set[int] = set()
    for record in rounds:
        lines = [REFINE_ATTEMPT.format(round=record["round"])]
        if layers["experience"] and record.get("experience"):
            lines.append(REFINE_EXPERIENCE.format(experience=record["experience"]))
        if layers["thought"] and record.get("thought"):
            lines.append(REFINE_THOUGHT.format(thought=record["thought"]))
        if record.get("mode") == "edit":
            lines.append(REFINE_EDITED.format(base=record.get("base_round"), prompt=record.get("prompt", "")))
        else:
            lines.append(REFINE_PROMPT.format(prompt=record.get("prompt", "")))
        parts.append({"type": "text", "text": "\n".join(lines)})
        if layers["images"] and record["round"] in with_image and record.get("image", {}).get("sha256"):
            parts.append({"type": "text", "text": REFINE_IMAGE})
            url = store.data_url(record["image"], settings.mllm.image_max_side)
            parts.append({"type": "image_url", "image_url": {"url": url}})
            shown.add(record["round"])
        parts.append({"type": "text", "text": REFINE_FAILED.format(failed=bullets(record.get("failed") or []))})
    if base is not None:
        parts.append({"type": "text", "text": EDIT_BASE.format(round=base["round"])})
        if base["round"] in shown:  # the model has it already; sending it twice only costs tokens
            parts.append({"type": "text", "text": EDIT_BASE_SHOWN.format(round=base["round"])})
        elif base.get("image", {}).get("sha256"):
            url = store.data_url(base["image"], settings.mllm.image_max_side)
            parts.append({"type": "image_url", "image_url": {"url": url}})
        text = EDIT_BASE_PASSED.format(passed=bullets(base.get("passed") or []))
        parts.append(
            {"type": "text", "text": text + "\n" + REFINE_FAILED.format(failed=bullets(base.get("failed") or []))}
        )
    parts.append({"type": "text", "text": ask})
    return parts
