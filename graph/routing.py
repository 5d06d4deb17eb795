"""Pure routing functions for the conditional edges of the GEMS loop."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime
from langgraph.types import Send

from gems.configs import context_settings
from gems.configs.settings import MAX_CANDIDATES, MAX_CRITERIA
from gems.memory.state import GemsState, PlannerState, VerifyTask
from gems.nodes.runtime import pinned

MAX_TOOL_TURNS = 6  # planner turns before planning stops calling tools


def route_after_plan(state: PlannerState) -> Literal["skills", "prepare"]:
    """Run the planner's tool calls, or move on once it has answered in text."""
    messages = state.get("planner_messages") or []
    if messages and isinstance(messages[-1], AIMessage) and messages[-1].tool_calls:
        turns = sum(1 for m in messages if isinstance(m, AIMessage))
        if turns <= MAX_TOOL_TURNS:
            return "skills"
    return "prepare"


def route_after_generate(state: GemsState, runtime: Runtime[Any]) -> list[Send] | Literal["finalize"]:
    """Fan out one verifier call per (candidate, criterion), or per candidate with `loop.verify: batched`; with no
    criteria there is nothing to check."""
    criteria = (state.get("criteria") or [])[:MAX_CRITERIA]  # a state edit cannot fan out past the cap
    if not criteria:
        return "finalize"
    candidates = (state.get("candidates") or [])[:MAX_CANDIDATES]
    verifiers = state.get("verifiers") or []
    if context_settings(runtime.context).loop.verify == "batched":
        return [
            Send(
                "verify",
                VerifyTask(
                    round=state["round"],
                    candidate=c,
                    index=-1,
                    criterion="",
                    image=image,
                    verifiers=verifiers,
                    criteria=criteria,
                ),
            )
            for c, image in enumerate(candidates)
        ]
    return [
        Send(
            "verify",
            VerifyTask(
                round=state["round"],
                candidate=c,
                index=i,
                criterion=q,
                image=image,
                verifiers=verifiers,
            ),
        )
        for c, image in enumerate(candidates)
        for i, q in enumerate(criteria)
    ]


def route_after_critique(state: GemsState, runtime: Runtime[Any]) -> Literal["finalize", "review_round", "compress"]:
    """Stop when every criterion passed or the round budget is spent; else a person's review if asked, or refine.

    The budget and the review flag are the run's own (pinned when it started, within their bounds).
    """
    rounds = state.get("rounds") or []
    if rounds and not rounds[-1].get("failed"):
        return "finalize"
    options = pinned(state, context_settings(runtime.context))
    if state.get("round", 0) >= options["max_rounds"]:
        return "finalize"
    return "review_round" if options["review_rounds"] else "compress"


def route_after_review(state: GemsState) -> Literal["finalize", "compress"]:
    """A reviewer who accepted the round's image ends the run with it; otherwise the loop goes on."""
    return "finalize" if state.get("accepted_round") else "compress"


def recursion_limit_for(max_rounds: int) -> int:
    """Supersteps a run may take: intake, planning with its tool loop, six per round, then finalize and learn."""
    return 6 * max_rounds + 30
