"""The graph's public input and output schemas; the state itself is `gems.memory.state.GemsState`."""

from __future__ import annotations

from typing import Any

from typing_extensions import TypedDict

from gems.memory.state import ImageRef, RoundRecord, Verdict


class GemsInput(TypedDict):
    """What a caller provides; run options go in the context (`GemsSettings`)."""

    prompt: str


class GemsOutput(TypedDict, total=False):
    """What a run returns, and what servers stream node by node (so each round's image shows as it is made)."""

    prompt: str
    skill: str | None
    skill_trace: dict[str, Any]
    criteria: list[str]
    round: int
    current_prompt: str
    candidates: list[ImageRef]
    verdicts: list[Verdict]
    rounds: list[RoundRecord]
    final: dict[str, Any]
    success: bool
    lessons: list[dict[str, Any]]
    lesson_id: str
    warnings: list[str]
