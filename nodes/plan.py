"""Planner role: pick at most one skill among retrieved candidates and, when one fits, write the first prompt with it.

Two ways to reach the same decision:
- tools (default): the planner sees the candidates' names and descriptions and loads a body only by calling
  `load_skill`, run by the `skills` ToolNode; `plan` and `skills` loop until the planner answers in text.
- text (endpoints without tool calling): the paper's two calls, a name-or-NONE reply, then a rewrite with the body.
`prepare` then fixes the first prompt and records which skills were offered, chosen and loaded.
"""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.prebuilt import ToolNode
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore

from gems.configs import GemsSettings, context_settings
from gems.memory.embeddings import get_embeddings
from gems.memory.experiences import ExperienceStore
from gems.memory.state import PlannerState
from gems.nodes.calls import ask, blocking, converse
from gems.nodes.mllm import MLLMError, image_part, text_part
from gems.nodes.parsing import clean_prompt, parse_skill_choice
from gems.nodes.prompts import format_lessons, skill_block
from gems.nodes.prompts.plan import (
    ENHANCE_SYSTEM,
    ENHANCE_USER,
    PLANNER_SYSTEM,
    PLANNER_USER,
    REFERENCES_NOTE,
    ROUTER_SYSTEM,
    ROUTER_USER,
    THOUGHT_EDIT,
    THOUGHT_ORIGINAL,
    THOUGHT_WITH_SKILL,
)
from gems.nodes.runtime import artifact_store, lesson_settings, timed, usage_update
from gems.skills import Skill, registry_for
from gems.skills.retrieval import get_index
from gems.skills.tools import PLANNER_MESSAGES, SKILL_TOOLS, loaded_skills

log = logging.getLogger(__name__)


def recall_lessons(
    prompt: str, settings: GemsSettings, store: BaseStore | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Retrieve the top-k relevant lessons from earlier runs; a broken store becomes a warning, not a crash."""
    memory = settings.memory
    if not memory.lessons:
        return [], []
    where = {"generator_model": settings.generator.model_label} if memory.same_generator_only else None
    try:
        hits = ExperienceStore(settings, store).search(
            prompt, k=memory.top_k, min_relevance=memory.min_relevance, where=where
        )
    except Exception as exc:
        log.warning("lessons unavailable: %s", exc)
        return [], [f"lessons unavailable: {exc}"]
    return [
        {"id": lesson.id, "prompt": lesson.prompt, "brief": lesson.brief(), "relevance": score}
        for lesson, score in hits
    ], []


def skill_candidates(prompt: str, settings: GemsSettings) -> list[tuple[Skill, float]]:
    """The top-k skills for the prompt by embedding similarity (all of them when the library is that small)."""
    if not settings.skills.enabled:
        return []
    registry = registry_for(settings)
    if not len(registry):
        return []
    if len(registry) <= settings.skills.top_k and settings.skills.min_relevance == 0:
        return [(skill, 1.0) for skill in registry.skills.values()]
    index = get_index(registry, get_embeddings(settings.embeddings), cache_dir=settings.data_dir / "cache")
    return index.search(prompt, k=settings.skills.top_k, min_relevance=settings.skills.min_relevance)


def _manifest(candidates: list[dict[str, Any]], registry: Any) -> str:
    return registry.manifest([c["name"] for c in candidates])


async def _text_mode(
    state: PlannerState, settings: GemsSettings, lessons_text: str, trace: dict[str, Any]
) -> dict[str, Any]:
    """The paper's flow: one call names a skill or NONE, a second rewrites the prompt with the loaded body."""
    registry = registry_for(settings)
    names = [c["name"] for c in trace["offered"]]
    manifest = _manifest(trace["offered"], registry)
    user = ROUTER_USER.format(manifest=manifest, lessons=lessons_text, prompt=state["prompt"])
    reply = await ask(settings.mllm, ROUTER_SYSTEM, await blocking(_with_references, user, state, settings))
    usages, calls = [reply.usage], 1
    trace["router_reply"] = reply.text[:200]
    chosen = parse_skill_choice(reply.text, names)
    update: dict[str, Any] = {}
    if chosen is not None:
        trace["chosen"] = [chosen]
        skill = registry.get(chosen)
        assert skill is not None
        enhanced = await ask(
            settings.mllm,
            ENHANCE_SYSTEM.format(skills=skill_block([skill])),
            ENHANCE_USER.format(lessons=lessons_text.lstrip("\n"), prompt=state["prompt"]),
        )
        usages.append(enhanced.usage)
        calls += 1
        rewritten = clean_prompt(enhanced.text)
        if rewritten:
            trace["loaded"] = [chosen]
            update["current_prompt"] = rewritten
            update["thought"] = enhanced.thought or THOUGHT_WITH_SKILL.format(name=chosen)
    return {**update, "mllm_calls": calls, "usage": usage_update(*usages)}


async def plan(state: PlannerState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """One planner step: on entry, recall lessons and retrieve skill candidates; then ask the planner.

    Args:
        state: `prompt` (and `references`, images the person attached); on later steps `planner_messages`, the
            planner's own conversation with its tool results.
        runtime: the run's settings as context.

    Returns:
        New `planner_messages` while the planner is calling tools; otherwise what `prepare` needs.
    """
    settings = lesson_settings(context_settings(runtime.context))
    timings: dict[str, float] = {}
    messages = list(state.get("planner_messages") or [])
    update: dict[str, Any] = {}
    with timed(timings, "plan"):
        if not messages:
            # Step 1: what earlier runs taught, and which skills could apply (retrieval keeps the prompt small).
            lessons, warnings = await blocking(recall_lessons, state["prompt"], settings, runtime.store)
            candidates = await blocking(skill_candidates, state["prompt"], settings)
            trace: dict[str, Any] = {
                "mode": settings.skills.tool_calling,
                "offered": [{"name": s.name, "relevance": score} for s, score in candidates],
                "chosen": [],
                "loaded": [],
                "resources": [],
            }
            update = {"lessons": lessons, "skill_trace": trace, **({"warnings": warnings} if warnings else {})}
            if (state.get("action") or {}).get("mode") == "edit":
                trace["mode"] = "off (round 1 edits an image)"  # the instruction is the person's own words
                return {**update, "timings": timings}
            if not candidates:
                trace["mode"] = "off"
                return {**update, "timings": timings}
            lessons_text = format_lessons(lessons)
            if settings.skills.tool_calling == "text":
                text_update = await _text_mode(state, settings, lessons_text, trace)
                return {**update, **text_update, "timings": timings}
            registry = registry_for(settings)
            system = PLANNER_SYSTEM.format(
                max_active=settings.skills.max_active,
                manifest=_manifest(trace["offered"], registry),
                lessons=lessons_text,
            )
            request = await blocking(_with_references, PLANNER_USER.format(prompt=state["prompt"]), state, settings)
            messages = [SystemMessage(content=system), HumanMessage(content=request)]
            update["planner_messages"] = messages

        # Step 2: the planner answers, or calls load_skill / read_skill_resource (run by the `skills` node).
        try:
            reply = await converse(settings.mllm, messages, SKILL_TOOLS)
        except MLLMError as exc:
            first_call = len(messages) == 2
            if settings.skills.tool_calling == "auto" and first_call and exc.status in (400, 404, 405, 422, 501):
                # The endpoint refuses tools (e.g. vLLM without --enable-auto-tool-choice): fall back to text.
                trace = dict(update.get("skill_trace") or state.get("skill_trace") or {})
                trace["mode"] = f"text (tools refused: HTTP {exc.status})"
                lessons_text = format_lessons(update.get("lessons") or state.get("lessons") or [])
                fallback = await _text_mode(state, settings, lessons_text, trace)
                return {**update, "planner_messages": [], "skill_trace": trace, **fallback, "timings": timings}
            raise
    usage = dict(getattr(reply, "usage_metadata", None) or {})
    new_messages = [*update.get("planner_messages", []), reply]
    return {
        **update,
        "planner_messages": as_records(new_messages),
        "mllm_calls": 1,
        "timings": timings,
        "usage": usage_update(usage),
    }


def as_records(messages: list[Any]) -> list[dict[str, Any]]:
    """The planner's messages as plain records (`add_messages` turns them back into messages in state).

    LangGraph's "messages" stream emits every message object a node returns, whatever the key; the planner's own
    conversation is not chat, so its nodes return records, and only `messages` ever streams.
    """
    out = []
    for m in messages:
        record: dict[str, Any] = {"type": m.type, "content": m.content, "id": m.id}
        if isinstance(m, AIMessage):
            record.update(tool_calls=m.tool_calls, additional_kwargs=m.additional_kwargs)
        elif isinstance(m, ToolMessage):
            record.update(tool_call_id=m.tool_call_id, name=m.name, artifact=m.artifact, status=m.status)
        out.append(record)
    return out


_TOOLS = ToolNode(SKILL_TOOLS, messages_key=PLANNER_MESSAGES, handle_tool_errors=True)


async def skills(state: PlannerState, config: RunnableConfig) -> dict[str, Any]:
    """Run the planner's tool calls (`load_skill`, `read_skill_resource`) with LangGraph's `ToolNode`."""
    out = await _TOOLS.ainvoke(state, config)
    return {PLANNER_MESSAGES: as_records(out[PLANNER_MESSAGES])}


def _with_references(text: str, state: PlannerState, settings: GemsSettings) -> Any:
    """The planner's request, with the images the person attached (as references it may use)."""
    refs = state.get("references") or []
    if not refs:
        return text
    store = artifact_store(settings)
    images: list[str | dict[str, Any]] = [image_part(store.data_url(r, settings.mllm.image_max_side)) for r in refs]
    return [text_part(text + "\n" + REFERENCES_NOTE), *images]


def prepare(state: PlannerState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Fix the first prompt: the planner's rewrite when a skill was loaded, else the request as written.

    Returns:
        `current_prompt`, `thought`, `skill`, `skill_trace`, `verifiers` (tools the loaded skills bring).
    """
    settings = context_settings(runtime.context)
    trace = dict(state.get("skill_trace") or {})
    if (state.get("action") or {}).get("mode") == "edit":  # round 1 edits an image by the person's own words
        return {"current_prompt": state.get("current_prompt"), "thought": THOUGHT_EDIT, "skill": None,
                "skill_trace": trace, "verifiers": []}  # fmt: skip
    messages = state.get("planner_messages") or []
    current = state.get("current_prompt")
    thought = state.get("thought")
    if messages:
        loaded = loaded_skills(messages)
        calls = [tc for m in messages if isinstance(m, AIMessage) for tc in m.tool_calls]
        trace["chosen"] = [tc["args"].get("name") for tc in calls if tc["name"] == "load_skill"]
        trace["resources"] = [
            f"{m.artifact['name']}/{m.artifact['path']}"
            for m in messages
            if isinstance(m, ToolMessage) and m.name == "read_skill_resource" and isinstance(m.artifact, dict)
        ]
        trace["loaded"] = loaded
        last = messages[-1]
        answer = clean_prompt(last.content if isinstance(last.content, str) else str(last.content))
        if isinstance(last, AIMessage) and loaded and answer and answer.upper() != "NONE" and not last.tool_calls:
            current = answer
            reasoning = last.additional_kwargs.get("reasoning_content")
            thought = reasoning or THOUGHT_WITH_SKILL.format(name=", ".join(loaded))
    loaded = trace.get("loaded") or []
    if not current or not loaded:
        current, thought = state["prompt"], THOUGHT_ORIGINAL
    cap = settings.loop.max_prompt_chars
    if len(current) > cap and current != state["prompt"]:  # a runaway rewrite; the user's own request is kept whole
        current = current[:cap].rsplit(" ", 1)[0]
    registry = registry_for(settings)
    verifiers = sorted({v for name in loaded if (s := registry.get(name)) for v in (s.metadata.get("verifiers") or [])})
    return {
        "current_prompt": current,
        "thought": thought,
        "skill": loaded[0] if loaded else None,
        "skill_trace": trace,
        "verifiers": verifiers,
    }
