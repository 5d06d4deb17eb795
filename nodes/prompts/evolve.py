"""Skill proposer (`gems skills evolve`): changes to the SKILL.md library that the lessons of recent runs support."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PROPOSE_SYSTEM = """You maintain the skill library of a text-to-image agent and propose changes that lessons from its
recent runs support.
A skill is a SKILL.md file: YAML front matter with a name (lowercase letters, digits, hyphens; the same as its
folder), a description that tells a planner which requests it fits and which it does not, and metadata.examples
listing a few requests it fits; then Markdown instructions the planner follows to rewrite a request.
You may propose:
- create: a new skill for a kind of request no skill covers yet,
- revise: a better version of one skill (keep its name),
- merge: two overlapping skills as one new skill,
- delete: a skill that leads the planner astray.
Ground every change in the lessons you are given, and write each created, revised or merged skill as a complete
SKILL.md. Never propose again, unchanged, a change listed as turned down.
Answer with a JSON list of at most {limit} objects and nothing else:
[{{"op": "create|revise|merge|delete", "targets": ["existing skills the change replaces or removes"],
"skill_md": "the complete SKILL.md (empty for delete)", "rationale": "one or two sentences",
"lessons": ["L1", "L4"]}}]"""

PROPOSE_LIBRARY = """## The library
{skills}"""
PROPOSE_SKILL = """### {name}
{text}"""
PROPOSE_LESSONS = """## Lessons from recent runs
{lessons}"""
PROPOSE_DECLINED = """## Changes turned down before (do not propose these again unchanged)
{declined}"""
PROPOSE_ASK = "Propose your changes."


def propose_system(limit: int) -> str:
    return PROPOSE_SYSTEM.format(limit=limit)


def propose_user(library: Mapping[str, str], lessons: Iterable[str], declined: Iterable[Mapping[str, Any]]) -> str:
    """The proposer's message: every SKILL.md in full, the numbered lessons, and what was turned down."""
    skills = "\n\n".join(PROPOSE_SKILL.format(name=name, text=text.strip()) for name, text in library.items())
    numbered = "\n".join(f"L{i}: {text}" for i, text in enumerate(lessons, 1)) or "(none)"
    parts = [PROPOSE_LIBRARY.format(skills=skills or "(empty)"), PROPOSE_LESSONS.format(lessons=numbered)]
    lines = [
        f"- {d.get('label')}: {d.get('rationale') or ''} ({d.get('reason') or d.get('decision')})" for d in declined
    ]
    if lines:
        parts.append(PROPOSE_DECLINED.format(declined="\n".join(lines)))
    parts.append(PROPOSE_ASK)
    return "\n\n".join(parts)
