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
REFINE_IMAGE = "Image it produced:"
REFINE_FAILED = """Requirements it failed:
{failed}"""
REFINE_ASK = """
Write the next prompt."""


def refine_system(skills: list[Any]) -> str:
    """The refiner's system prompt, with loaded skills' instructions when `skills.to_refiner` is on."""
    return REFINE_SYSTEM + (REFINE_SKILLS.format(skills=skill_block(skills)) if skills else "")


def refiner_parts(state: Mapping[str, Any], settings: GemsSettings, store: ArtifactStore) -> list[dict[str, Any]]:
    """The refiner's user message parts (text and image blocks) from the trajectory, oldest round first.

    `memory.mode` picks the layers (`MODE_LAYERS`: the paper's ablation rows); `memory.image_window` bounds how many
    latest rounds send their image.
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
    for record in rounds:
        lines = [REFINE_ATTEMPT.format(round=record["round"])]
        if layers["experience"] and record.get("experience"):
            lines.append(REFINE_EXPERIENCE.format(experience=record["experience"]))
        if layers["thought"] and record.get("thought"):
            lines.append(REFINE_THOUGHT.format(thought=record["thought"]))
        lines.append(REFINE_PROMPT.format(prompt=record.get("prompt", "")))
        parts.append({"type": "text", "text": "\n".join(lines)})
        if layers["images"] and record["round"] in with_image and record.get("image", {}).get("sha256"):
            parts.append({"type": "text", "text": REFINE_IMAGE})
            url = store.data_url(record["image"], settings.mllm.image_max_side)
            parts.append({"type": "image_url", "image_url": {"url": url}})
        parts.append({"type": "text", "text": REFINE_FAILED.format(failed=bullets(record.get("failed") or []))})
    parts.append({"type": "text", "text": REFINE_ASK})
    return parts
