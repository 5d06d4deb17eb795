"""Planner role: route the prompt to at most one skill and, when one applies, write the first prompt with it."""

from __future__ import annotations

import logging
from typing import Any

from langgraph.runtime import Runtime

from gems.configs import GemsSettings
from gems.graph.state import GemsState
from gems.nodes.mllm import get_mllm
from gems.nodes.parsing import clean_prompt, parse_skill_choice
from gems.nodes.runtime import settings_of, timed, usage_update
from gems.skills import load_registry

log = logging.getLogger(__name__)

ROUTER_SYSTEM = """You decide which expert skill, if any, should shape a text-to-image request.
Each skill below has a name and a description of when it applies and when it does not. Choose a skill only when
the request plainly matches its description and the skill would clearly make the image better; in every other
case choose NONE.
Reply with exactly one skill name from the list, or NONE. Write nothing else."""

ROUTER_USER = """Skills:
{manifest}
{lessons}
Request:
{prompt}"""

ENHANCE_SYSTEM = """You rewrite text-to-image prompts with the help of an expert skill.
Follow the skill's instructions below. Keep every object, number, attribute, relation and quoted piece of text the
user asked for; add only detail that serves the request. Return only the rewritten prompt: no title, no notes, no
surrounding quotes.

<skill name="{name}">
{body}
</skill>"""

ENHANCE_USER = """{lessons}User request:
{prompt}"""

LESSONS_BLOCK = """
Lessons from similar earlier requests (use what applies, ignore the rest):
{items}
"""

THOUGHT_WITH_SKILL = "First prompt written with the {name} skill from the user's request."
THOUGHT_ORIGINAL = "First attempt uses the user's request unchanged."


def format_lessons(lessons: list[dict[str, Any]]) -> str:
    """The lessons block for a prompt, empty when there are none (so prompts match the paper's)."""
    if not lessons:
        return ""
    return LESSONS_BLOCK.format(items="\n".join(f"- {item['brief']}" for item in lessons))


def recall_lessons(prompt: str, settings: GemsSettings) -> tuple[list[dict[str, Any]], list[str]]:
    """Retrieve the top-k relevant lessons from earlier runs; a broken store becomes a warning, not a crash."""
    memory = settings.memory
    if not memory.lessons:
        return [], []
    from gems.memory.experiences import ExperienceStore

    generator = settings.generator
    where = {"generator_model": generator.model or (generator.preset or "")} if memory.same_generator_only else None
    try:
        hits = ExperienceStore(settings).search(prompt, k=memory.top_k, min_relevance=memory.min_relevance, where=where)
    except Exception as exc:
        log.warning("lessons unavailable: %s", exc)
        return [], [f"lessons unavailable: {exc}"]
    lessons = [
        {"id": lesson.id, "prompt": lesson.prompt, "brief": lesson.brief(), "relevance": score}
        for lesson, score in hits
    ]
    return lessons, []


def plan(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Choose a skill for the prompt and write the first-round prompt.

    Args:
        state: needs `prompt`.
        runtime: the run's settings as context.

    Returns:
        `skill`, `skill_trace`, `current_prompt`, `thought`, `max_rounds` and counters.
    """
    settings = settings_of(runtime)
    prompt = state["prompt"]
    timings: dict[str, float] = {}
    usages = []
    skill_name: str | None = None
    trace: dict[str, Any] = {"offered": [], "chosen": None, "loaded": [], "router_reply": None}
    current_prompt, thought = prompt, THOUGHT_ORIGINAL
    calls = 0

    with timed(timings, "plan"):
        # Step 0: what earlier runs on similar prompts taught (off in paper mode).
        lessons, warnings = recall_lessons(prompt, settings)
        lessons_text = format_lessons(lessons)

        # Step 1: route, with the manifest of names and descriptions only.
        registry = load_registry(tuple(settings.skills.paths)) if settings.skills.enabled else None
        if registry is not None and len(registry):
            mllm = get_mllm(settings.mllm)
            names = registry.names()
            trace["offered"] = names
            reply = mllm.ask(
                ROUTER_SYSTEM,
                ROUTER_USER.format(manifest=registry.manifest(names), lessons=lessons_text, prompt=prompt),
            )
            calls += 1
            usages.append(reply.usage)
            trace["router_reply"] = reply.text[:200]
            skill_name = parse_skill_choice(reply.text, names)
            trace["chosen"] = skill_name

            # Step 2: only now load the chosen skill's instructions and enhance the prompt.
            if skill_name is not None:
                skill = registry.get(skill_name)
                assert skill is not None
                trace["loaded"] = [skill_name]
                enhanced = mllm.ask(
                    ENHANCE_SYSTEM.format(name=skill.name, body=skill.body),
                    ENHANCE_USER.format(lessons=lessons_text.lstrip("\n"), prompt=prompt),
                )
                calls += 1
                usages.append(enhanced.usage)
                rewritten = clean_prompt(enhanced.text)
                if rewritten:
                    current_prompt = rewritten
                    thought = enhanced.thought or THOUGHT_WITH_SKILL.format(name=skill_name)

    update: dict[str, Any] = {
        "skill": skill_name,
        "skill_trace": trace,
        "current_prompt": current_prompt,
        "thought": thought,
        "max_rounds": settings.loop.max_rounds,
        "mllm_calls": calls,
        "timings": timings,
        "usage": usage_update(*usages),
        "lessons": lessons,
    }
    if warnings:
        update["warnings"] = warnings
    return update
