"""Every prompt gems sends, one module per role, each template a named constant; shared blocks live here.

A wording change is a diff in one of these files and in `tests/snapshots/prompts/` (see tests/test_prompts.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

LESSONS_BLOCK = """
Lessons from similar earlier requests (use what applies, ignore the rest):
{items}
"""

SKILL_BLOCK = """<skill name="{name}">
{body}
</skill>"""


def format_lessons(lessons: Iterable[Mapping[str, Any]]) -> str:
    """The lessons block (planner and refiner), empty when there are none, so prompts match the paper's."""
    items = "\n".join(f"- {item['brief']}" for item in lessons)
    return LESSONS_BLOCK.format(items=items) if items else ""


def skill_block(skills: Iterable[Any]) -> str:
    """Loaded skills' instructions, each in a `<skill>` tag."""
    return "\n\n".join(SKILL_BLOCK.format(name=s.name, body=s.body) for s in skills)


def bullets(items: Iterable[str]) -> str:
    text = "\n".join(f"- {q}" for q in items)
    return text or "- (none)"
