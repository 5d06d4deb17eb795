"""Agent Skills: the SKILL.md registry and the bundled skill library."""

from gems.skills.registry import (
    Skill,
    SkillError,
    SkillRegistry,
    bundled_library,
    load_registry,
    parse_skill_file,
    registry_for,
)

__all__ = [
    "Skill",
    "SkillError",
    "SkillRegistry",
    "bundled_library",
    "load_registry",
    "parse_skill_file",
    "registry_for",
]
