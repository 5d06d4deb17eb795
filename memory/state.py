"""The run's state: plain JSON types plus two message lists; images are `ImageRef`s into the artifact store.

The round records are the paper's working memory (raw facts per round plus the compressed experience); the reducers
say how node updates merge. Nodes, memory helpers and the graph all read this one contract.

`messages` is the conversation a person reads (chat UIs, LangGraph Studio): each request, one message per round
with its image and verdicts, the final answer. The planner's own tool loop lives in `planner_messages`; the other
roles keep no conversation in state. A thread may hold several requests (a chat): `turns` records the finished
ones, and a new request starts its run with the per-run channels reset.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict


class ImageRef(TypedDict, total=False):
    """A stored image: where it is and what produced it."""

    sha256: str
    width: int
    height: int
    seed: int | None
    backend: str
    model: str | None
    steps: int | None
    guidance_scale: float | None
    candidate: int
    edit: bool  # made by the editor from an earlier image


class Verdict(TypedDict):
    """One verifier answer for one criterion on one candidate image."""

    round: int
    candidate: int
    index: int
    criterion: str
    passed: bool
    answer: str
    error: str | None
    checks: NotRequired[list[dict[str, Any]]]  # results of skill-brought tools (OCR), when any ran
    mllm_passed: NotRequired[bool]  # the MLLM's own verdict, when tools took part


class RoundRecord(TypedDict, total=False):
    """The factual memory of one round plus its compressed experience."""

    round: int
    prompt: str
    thought: str | None
    image: ImageRef
    candidates: list[ImageRef]
    passed: list[str]
    failed: list[str]
    verdicts: list[Verdict]
    experience: str | None
    # How the image was made: "generate" (from a prompt) or "edit" (of `base_round`'s image by `instruction`).
    mode: str
    instruction: str
    base_round: int | None  # edits: the edited round; new generations: the round before, for comparison
    base_image: ImageRef
    reason: str | None  # refine_mode auto: why the refiner chose this mode
    kept: list[str]  # criteria that passed in the base round and still pass
    fixed: list[str]  # criteria that failed in the base round and now pass
    broken: list[str]  # criteria that passed in the base round and now fail


class RoundAction(TypedDict, total=False):
    """What the refiner decided for the next round: a new prompt (`generate`) or an edit of an earlier image."""

    round: int
    mode: str
    base_round: int
    base_image: ImageRef
    reason: str | None


class VerifyTask(TypedDict):
    """What one parallel verifier call receives (sent with `Send`): one criterion, or (`loop.verify: batched`) every
    criterion of the image in `criteria`, `index` and `criterion` then unused."""

    round: int
    candidate: int
    index: int
    criterion: str
    image: ImageRef
    verifiers: NotRequired[list[str]]
    criteria: NotRequired[list[str]]


def merge_rounds(left: list[RoundRecord] | None, right: list[RoundRecord] | None) -> list[RoundRecord]:
    """Upsert round records by round number, so a later node can add the experience to an existing round."""
    by_round = {r["round"]: dict(r) for r in (left or [])}
    for record in right or []:
        by_round.setdefault(record["round"], {}).update(record)
    return [by_round[k] for k in sorted(by_round)]  # type: ignore[misc]


def add_numbers(left: dict[str, float] | None, right: dict[str, float] | None) -> dict[str, float]:
    """Sum dicts of counters or seconds key by key."""
    out = dict(left or {})
    for key, value in (right or {}).items():
        out[key] = round(out.get(key, 0) + value, 6)
    return out


class Turn(TypedDict, total=False):
    """A finished request of the conversation, as later requests on the thread see it."""

    request: str  # the request as the run took it (a follow-up already made whole)
    request_id: str | None  # the id of the human message that asked it
    image: ImageRef
    passed: list[str]
    failed: list[str]
    success: bool | None


class GemsState(TypedDict):
    """The whole state of one thread: the current run, plus the conversation it belongs to."""

    prompt: str
    messages: NotRequired[Annotated[list[AnyMessage], add_messages]]  # what a person reads
    owner: NotRequired[str]  # the tenant whose run this is ("" without tenants): pages and links check it
    request_id: NotRequired[str | None]  # the human message this run answers
    references: NotRequired[list[ImageRef]]  # images the person attached to the request
    options: NotRequired[dict[str, Any]]  # run options a trusted caller pins in the input (see configs.PINNED)
    turns: NotRequired[Annotated[list[Turn], operator.add]]  # earlier requests on this thread
    skill: NotRequired[str | None]
    skill_trace: NotRequired[dict[str, Any]]
    verifiers: NotRequired[list[str]]
    lessons: NotRequired[list[dict[str, Any]]]
    lesson_id: NotRequired[str]
    warnings: NotRequired[Annotated[list[str], operator.add]]
    criteria: NotRequired[list[str]]
    current_prompt: NotRequired[str]  # the next round's prompt, or its edit instruction when `action` is an edit
    action: NotRequired[RoundAction]
    thought: NotRequired[str | None]
    max_rounds: NotRequired[int]
    human_review: NotRequired[bool]
    review_rounds: NotRequired[bool]
    refine_mode: NotRequired[str]
    accepted_round: NotRequired[int | None]  # a reviewer accepted this round's image: the run ends with it
    reviewer_prompt: NotRequired[str | None]  # a reviewer wrote the next prompt: the refiner is not asked
    seed: NotRequired[int | None]  # the run's base seed as started; a resume keeps it
    images_per_round: NotRequired[int]
    config_digest: NotRequired[str]  # what produced the run (settings_digest without run options)
    round: NotRequired[int]
    candidates: NotRequired[list[ImageRef]]
    verdicts: NotRequired[Annotated[list[Verdict], operator.add]]
    rounds: NotRequired[Annotated[list[RoundRecord], merge_rounds]]
    final: NotRequired[dict[str, Any]]
    success: NotRequired[bool]
    mllm_calls: NotRequired[Annotated[int, operator.add]]
    generator_calls: NotRequired[Annotated[int, operator.add]]
    timings: NotRequired[Annotated[dict[str, float], add_numbers]]
    usage: NotRequired[Annotated[dict[str, float], add_numbers]]


class PlannerState(TypedDict):
    """The planner's own state (a subgraph): its tool loop never reaches the run's `messages`."""

    prompt: str
    references: NotRequired[list[ImageRef]]
    action: NotRequired[RoundAction]  # an edit planned for round 1 (intake): the planner does not rewrite
    current_prompt: NotRequired[str | None]
    planner_messages: NotRequired[Annotated[list[AnyMessage], add_messages]]
    lessons: NotRequired[list[dict[str, Any]]]
    skill_trace: NotRequired[dict[str, Any]]
    skill: NotRequired[str | None]
    thought: NotRequired[str | None]
    verifiers: NotRequired[list[str]]
    warnings: NotRequired[Annotated[list[str], operator.add]]
    mllm_calls: NotRequired[Annotated[int, operator.add]]
    timings: NotRequired[Annotated[dict[str, float], add_numbers]]
    usage: NotRequired[Annotated[dict[str, float], add_numbers]]


class PlannerInput(TypedDict):
    """What the planner reads from the run (counters start at zero inside, so its totals add up once)."""

    prompt: str
    references: NotRequired[list[ImageRef]]
    action: NotRequired[RoundAction]
    current_prompt: NotRequired[str | None]


class PlannerOutput(TypedDict, total=False):
    """What the planner hands back to the run."""

    lessons: list[dict[str, Any]]
    skill_trace: dict[str, Any]
    skill: str | None
    current_prompt: str | None
    thought: str | None
    verifiers: list[str]
    warnings: list[str]
    mllm_calls: int
    timings: dict[str, float]
    usage: dict[str, float]
