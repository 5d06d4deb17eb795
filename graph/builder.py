"""The GEMS loop as a LangGraph `StateGraph`: wiring on one screen, plus the `graph` that langgraph.json serves."""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import ToolNode

from gems.configs import GemsSettings, RunOptions
from gems.graph.routing import recursion_limit_for, route_after_critique, route_after_generate, route_after_plan
from gems.graph.state import GemsInput, GemsOutput
from gems.memory.state import GemsState
from gems.nodes.calls import node
from gems.nodes.compress import compress
from gems.nodes.critique import critique, verify
from gems.nodes.decompose import decompose
from gems.nodes.finalize import finalize
from gems.nodes.generate import generate
from gems.nodes.learn import learn
from gems.nodes.plan import plan, prepare
from gems.nodes.refine import refine
from gems.nodes.review import review
from gems.skills.tools import SKILL_TOOLS


def build_builder(context_schema: type[Any] = GemsSettings) -> StateGraph[GemsState, Any, GemsInput, GemsOutput]:
    """Return the uncompiled graph (tests and hosts compile it with their own checkpointer/store).

    `context_schema`: `GemsSettings` where the caller is trusted (CLI, bench, embedding code), `RunOptions` where
    clients send the context (the served `graph`): then nothing but run options can come from a request.
    """
    builder = StateGraph(GemsState, context_schema=context_schema, input_schema=GemsInput, output_schema=GemsOutput)
    # Nodes that call models are async; `node` gives each a sync body too, so `invoke` and `ainvoke` both work.
    builder.add_node("plan", node(plan))  # lessons, skill candidates, the planner's turn
    builder.add_node("skills", ToolNode(SKILL_TOOLS, handle_tool_errors=True))  # load_skill, read_skill_resource
    builder.add_node("prepare", prepare)  # the first prompt and the skill trace
    builder.add_node("decompose", node(decompose))  # criteria of the original prompt, in parallel with plan
    builder.add_node("review", review)  # optional human review (interrupt) before the first generation
    builder.add_node("generate", node(generate))
    # One Send per (candidate, criterion): the node's input is the Send's VerifyTask, not the state.
    builder.add_node("verify", node(verify))
    builder.add_node("critique", critique)  # the round's factual record
    builder.add_node("compress", node(compress))  # the round's experience
    builder.add_node("refine", node(refine))
    builder.add_node("finalize", finalize)
    builder.add_node("learn", node(learn))  # the run's lesson, for later runs

    builder.add_edge(START, "plan")
    builder.add_edge(START, "decompose")
    builder.add_conditional_edges("plan", route_after_plan, ["skills", "prepare"])
    builder.add_edge("skills", "plan")
    builder.add_edge(["prepare", "decompose"], "review")
    builder.add_edge("review", "generate")
    builder.add_conditional_edges("generate", route_after_generate, ["verify", "finalize"])
    builder.add_edge("verify", "critique")
    builder.add_conditional_edges("critique", route_after_critique, ["compress", "finalize"])
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
    """The RunnableConfig for one run: thread id, a recursion limit derived from max_rounds, verifier parallelism."""
    config: dict[str, Any] = {
        "recursion_limit": recursion_limit_for(settings.loop.max_rounds),
        "max_concurrency": settings.loop.verifier_concurrency,
        **extra,
    }
    if thread_id is not None:
        config["configurable"] = {"thread_id": thread_id}
    return config


def continuation(snapshot: Any, prompt: str) -> tuple[bool, dict[str, str] | None]:
    """How to go on with a thread: `(False, None)` when it has finished, else `(True, input)`.

    A thread has finished only when `finalize` has written its result and nothing is left to run. Otherwise the
    input is None to resume from the last checkpoint (a crash, a kill, an interrupt), or `{"prompt": ...}` to start
    over when no step ever completed (a run killed right after its first checkpoint has `next == ()` and only the
    `__start__` task), so retrying with the same thread id never redoes finished work and never skips a prompt.
    """
    if not snapshot.values:
        return True, {"prompt": prompt}
    if snapshot.next:
        return True, None
    if snapshot.values.get("final"):
        return False, None
    return True, {"prompt": snapshot.values.get("prompt") or prompt}


# The server (langgraph dev / Agent Server) injects its own checkpointer, so this one has none. Its clients may
# set run options only: endpoints, models, keys and folders come from the server's GEMS_CONFIG.
graph = build_graph(context_schema=RunOptions)
