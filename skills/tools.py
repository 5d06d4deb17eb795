"""Skills as tools: `load_skill` and `read_skill_resource`, run by a LangGraph `ToolNode` inside planning."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import ToolMessage
from langchain_core.tools import ToolException, tool
from langgraph.prebuilt import ToolRuntime

from gems.configs import context_settings
from gems.skills.registry import SkillRegistry, registry_for

MAX_RESOURCE_CHARS = 20_000
PLANNER_MESSAGES = "planner_messages"  # the state key of the planner's conversation (its ToolNode's messages_key)


def _registry(context: Any) -> SkillRegistry:
    return registry_for(context_settings(context))


def loaded_skills(messages: list[Any]) -> list[str]:
    """Names of the skills whose `load_skill` call succeeded, in order."""
    names = []
    for message in messages:
        if isinstance(message, ToolMessage) and message.name == "load_skill" and message.status != "error":
            name = (message.artifact or {}).get("name") if isinstance(message.artifact, dict) else None
            if name and name not in names:
                names.append(name)
    return names


@tool(response_format="content_and_artifact")
def load_skill(name: str, runtime: ToolRuntime[Any, Any]) -> tuple[str, dict[str, Any]]:
    """Load the full instructions of one candidate skill by its exact name; only for a skill that clearly fits."""
    state = runtime.state or {}
    offered = [c["name"] for c in (state.get("skill_trace") or {}).get("offered", [])]
    if name not in offered:
        raise ToolException(f"{name!r} is not one of the candidate skills: {', '.join(offered) or 'none'}")
    settings = context_settings(runtime.context)
    already = loaded_skills(state.get(PLANNER_MESSAGES) or [])
    if name not in already and len(already) >= settings.skills.max_active:
        raise ToolException(f"only {settings.skills.max_active} skill(s) may be active; already loaded: {already}")
    skill = _registry(runtime.context).get(name)
    if skill is None:  # pragma: no cover - offered names come from the registry
        raise ToolException(f"unknown skill {name!r}")
    resources = skill.resources()
    extra = f"\n\nResources you may read with read_skill_resource: {', '.join(resources)}" if resources else ""
    return f'<skill name="{name}">\n{skill.body}\n</skill>{extra}', {"name": name}


@tool(response_format="content_and_artifact")
def read_skill_resource(name: str, path: str, runtime: ToolRuntime[Any, Any]) -> tuple[str, dict[str, Any]]:
    """Read one reference file of a loaded skill, e.g. references/palettes.md."""
    if name not in loaded_skills((runtime.state or {}).get(PLANNER_MESSAGES) or []):
        raise ToolException(f"load the skill {name!r} with load_skill before reading its resources")
    skill = _registry(runtime.context).get(name)
    if skill is None or path not in skill.resources():
        available = ", ".join(skill.resources()) if skill else ""
        raise ToolException(f"{path!r} is not a resource of {name!r}; available: {available or 'none'}")
    text = (skill.folder / path).read_text(encoding="utf-8", errors="replace")
    return text[:MAX_RESOURCE_CHARS], {"name": name, "path": path}


SKILL_TOOLS = [load_skill, read_skill_resource]
