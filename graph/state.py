"""The graph's public input and output schemas; the state itself is `gems.memory.state.GemsState`."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from gems.memory.state import ImageRef, RoundRecord, Verdict


class GemsInput(TypedDict):
    """What a caller provides: a `prompt`, or chat `messages` whose last human message is the request.

    Run options go in the context (`GemsSettings`, or `RunOptions` on a server). A message may attach images (as
    content blocks) that the planner may use as references; on a thread that already answered a request, a new
    message continues the conversation ("now make the cube blue").
    """

    prompt: NotRequired[str]
    messages: NotRequired[Annotated[list[AnyMessage], add_messages]]
    options: NotRequired[dict[str, Any]]  # pinned run options (trusted callers; bounded like the settings)


class GemsOutput(TypedDict, total=False):
    """What a run returns, and what servers stream node by node (so each round's image shows as it is made)."""

    messages: Annotated[list[AnyMessage], add_messages]
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
