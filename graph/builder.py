"""The GEMS loop as a LangGraph `StateGraph`: wiring on one screen, plus the `graph` that langgraph.json serves."""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph

from gems.configs import GemsSettings, RunOptions
from gems.configs.loading import pinned_options
from gems.configs.settings import MAX_ROUNDS
from gems.graph.routing import (
    recursion_limit_for,
    route_after_critique,
    route_after_generate,
    route_after_plan,
    route_after_review,
)
from gems.graph.state import GemsInput, GemsOutput
from gems.memory.state import GemsState, PlannerInput, PlannerOutput, PlannerState
from gems.nodes.calls import node
from gems.nodes.compress import compress
from gems.nodes.critique import critique, verify
from gems.nodes.decompose import decompose
from gems.nodes.finalize import finalize
from gems.nodes.generate import generate
from gems.nodes.intake import intake
from gems.nodes.learn import learn
from gems.nodes.plan import plan, prepare, skills
from gems.nodes.refine import refine
from gems.nodes.review import review, review_round


def build_planner(context_schema: type[Any] = GemsSettings) -> Any:
    """The planner as a subgraph: plan and the `skills` ToolNode loop, then prepare fixes the first prompt.

    A subgraph of its own, so its tool loop (`planner_messages`) stays out of the run's `messages` and of what
    `stream_mode="messages"` streams; it reads the request and hands back the first prompt and skill trace.
    """
    planner = StateGraph(PlannerState, context_schema=context_schema, input_schema=PlannerInput,
                         output_schema=PlannerOutput)  # fmt: skip
    planner.add_node("plan", node(plan))  # lessons, skill candidates, the planner's turn
    planner.add_node("skills", node(skills))  # load_skill, read_skill_resource, run by LangGraph's ToolNode
    planner.add_node("prepare", prepare)  # the first prompt and the skill trace
    planner.add_edge(START, "plan")
    planner.add_conditional_edges("plan", route_after_plan, ["skills", "prepare"])
    planner.add_edge("skills", "plan")
    planner.add_edge("prepare", END)
    return planner.compile(name="planner")


def build_builder(context_schema: type[Any] = GemsSettings) -> StateGraph[GemsState, Any, GemsInput, GemsOutput]:
    """Return the uncompiled graph (tests and hosts compile it with their own checkpointer/store).

    `context_schema`: `GemsSettings` where the caller is trusted (CLI, bench, embedding code), `RunOptions` where
    clients send the context (the served `graph`): then nothing but run options can come from a request.
    """
    builder = StateGraph(GemsState, context_schema=context_schema, input_schema=GemsInput, output_schema=GemsOutput)
    # Nodes that call models are async; `node` gives each a sync body too, so `invoke` and `ainvoke` both work.
    builder.add_node("intake", node(intake))  # the request (prompt or chat message), options pinned, a new turn
    builder.add_node("planner", build_planner(context_schema))  # lessons, skills (a tool loop), the first prompt
    builder.add_node("decompose", node(decompose))  # criteria of the request, in parallel with planning
    builder.add_node("review", review)  # optional human review (interrupt) before the first generation
    builder.add_node("generate", node(generate))
    # One Send per (candidate, criterion): the node's input is the Send's VerifyTask, not the state.
    builder.add_node("verify", node(verify))
    builder.add_node("critique", node(critique))  # the round's factual record and its message
    builder.add_node("review_round", node(review_round))  # optional review after a round (loop.review_rounds)
    builder.add_node("compress", node(compress))  # the round's experience
    builder.add_node("refine", node(refine))
    builder.add_node("finalize", node(finalize))  # the chosen image and the answer message
    builder.add_node("learn", node(learn))  # the run's lesson, for later runs

    builder.add_edge(START, "intake")
    builder.add_edge("intake", "planner")
    builder.add_edge("intake", "decompose")
    builder.add_edge(["planner", "decompose"], "review")
    builder.add_edge("review", "generate")
    builder.add_conditional_edges("generate", route_after_generate, ["verify", "finalize"])
    builder.add_edge("verify", "critique")
    builder.add_conditional_edges("critique", route_after_critique, ["review_round", "compress", "finalize"])
    builder.add_conditional_edges("review_round", route_after_review, ["compress", "finalize"])
    builder.add_edge("compress", "refine")
    builder.add_edge("refine", "generate")
    builder.add_edge("finalize", "learn")
    builder.add_edge("learn", END)
    return builder


def build_graph(
    checkpointer: Any = None, store: Any = None, *, name: str = "gems", context_schema: type[Any] = GemsSettings
):
    """Compile the GEMS graph.

    Args:
        checkpointer: a LangGraph checkpointer (SQLite, Postgres, in-memory) or None.
        store: an optional LangGraph `BaseStore`.
        name: the graph's name in traces and Studio.
        context_schema: `GemsSettings` (trusted callers) or `RunOptions` (a server taking clients' context).

    Returns:
        A compiled graph: a LangChain `Runnable` (invoke, ainvoke, stream, batch). Pass run options as
        `context=GemsSettings(...)` and a thread id in `config["configurable"]["thread_id"]`.
    """
    return build_builder(context_schema).compile(checkpointer=checkpointer, store=store, name=name)


def run_config(settings: GemsSettings, thread_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """The RunnableConfig for one run: thread id, a recursion limit, verifier parallelism.

    The limit allows the most rounds any run may pin (a resumed run keeps the budget it started with, whatever the
    resuming caller's settings say); the loop itself stops at the run's own `max_rounds`.
    """
    config: dict[str, Any] = {
        "recursion_limit": recursion_limit_for(MAX_ROUNDS),
        "max_concurrency": settings.loop.verifier_concurrency,
        **extra,
    }
    if thread_id is not None:
        config["configurable"] = {"thread_id": thread_id}
    return config


def run_input(prompt: str, settings: GemsSettings | None = None) -> dict[str, Any]:
    """A new run's input: the request and, given settings, its pinned options (the first checkpoint then holds all a
    resume needs)."""
    return {"prompt": prompt, **({"options": pinned_options(settings)} if settings is not None else {})}


def continuation(
    snapshot: Any, prompt: str, settings: GemsSettings | None = None
) -> tuple[bool, dict[str, Any] | None]:
    """How to go on with a thread: `(False, None)` when it has finished, else `(True, input)`.

    A thread has finished only when `finalize` has written its result and nothing is left to run. Otherwise the
    input is None to resume from the last checkpoint (a crash, a kill, an interrupt), or a new run's input to start
    over when no step ever completed (a run killed right after its first checkpoint has `next == ()` and only the
    `__start__` task), so retrying with the same thread id never redoes finished work and never skips a prompt. A
    run started over keeps the options it was started with, when its first checkpoint holds them.
    """
    if not snapshot.values:
        return True, run_input(prompt, settings)
    if snapshot.next:
        return True, None
    if snapshot.values.get("final"):
        return False, None
    started = run_input(snapshot.values.get("prompt") or prompt, settings)
    if snapshot.values.get("options"):
        started["options"] = snapshot.values["options"]
    return True, started


# The server (langgraph dev / Agent Server) injects its own checkpointer, so this one has none. Its clients may
# set run options only: endpoints, models, keys and folders come from the server's GEMS_CONFIG.
graph = build_graph(context_schema=RunOptions)
