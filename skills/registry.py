"""The skill registry: loads `<name>/SKILL.md` folders (Agent Skills format), validates and indexes them."""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gems.configs import GemsError, GemsSettings

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
MAX_NAME = 64
MAX_DESCRIPTION = 1024


class SkillError(GemsError, ValueError):
    """A SKILL.md file is malformed; the message names the file and the problem."""


class FrontMatter(BaseModel):
    """A SKILL.md's YAML front matter (the Agent Skills format); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    name: str = ""
    description: str = ""
    license: str | None = None
    compatibility: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    allowed_tools: Any = Field(None, alias="allowed-tools")

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        if not isinstance(value, str) or not NAME_RE.match(value) or len(value) > MAX_NAME:
            raise ValueError(f"name must be 1-{MAX_NAME} lowercase letters, digits and hyphens, got {value!r}")
        return value

    @field_validator("description", mode="before")
    @classmethod
    def _description(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("description is empty; say what the skill does and when to use it")
        if len(value) > MAX_DESCRIPTION:
            raise ValueError(f"description has {len(value)} characters; the limit is {MAX_DESCRIPTION}")
        return " ".join(value.split())

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: Any) -> Any:
        return {} if value is None else value


def _front_matter_error(exc: ValidationError) -> str:
    """One line for the first problem; unknown keys are listed together."""
    errors = exc.errors()
    extra = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if extra:
        allowed = sorted(f.alias or name for name, f in FrontMatter.model_fields.items())
        return f"unknown front matter keys {extra}; allowed: {allowed}"
    first = errors[0]
    if first["type"] == "value_error":
        return str(first["msg"]).removeprefix("Value error, ")
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


@dataclass(frozen=True)
class Skill:
    """One skill: routing text (name, description) and the instructions loaded on demand."""

    name: str
    description: str
    body: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def resources(self) -> list[str]:
        """Relative paths of the optional files under `references/`."""
        ref_dir = self.folder / "references"
        if not ref_dir.is_dir() or ref_dir.is_symlink():
            return []
        inside = self.folder.resolve()
        # Files only, and only those that really live in the skill's folder: a symlink to /etc/... is not offered
        # (the planner would read it and send it to the MLLM).
        return sorted(
            str(p.relative_to(self.folder))
            for p in ref_dir.rglob("*")
            if p.is_file() and not p.is_symlink() and p.resolve().is_relative_to(inside)
        )


def parse_skill_file(path: Path) -> Skill:
    """Parse and validate one SKILL.md; raises `SkillError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SkillError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not text.startswith("---"):
        raise SkillError(f"{path}: missing YAML front matter (the file must start with a '---' line)")
    parts = text.split("\n---", 1)
    if len(parts) != 2:
        raise SkillError(f"{path}: front matter is not closed by a '---' line")
    head, body = parts[0][3:], parts[1].split("\n", 1)[1] if "\n" in parts[1] else ""
    try:
        meta = yaml.safe_load(head) or {}
    except yaml.YAMLError as exc:
        raise SkillError(f"{path}: front matter is not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    if not isinstance(meta, dict):
        raise SkillError(f"{path}: front matter must be a mapping with name and description")
    try:
        front = FrontMatter.model_validate(meta)
    except ValidationError as exc:
        raise SkillError(f"{path}: {_front_matter_error(exc)}") from None
    if front.name != path.parent.name:
        raise SkillError(f"{path}: name {front.name!r} must equal its folder name {path.parent.name!r}")
    if not body.strip():
        raise SkillError(f"{path}: the instructions (Markdown body after the front matter) are empty")
    return Skill(front.name, front.description, body.strip(), path, front.metadata)


def bundled_library() -> Path:
    """The folder of skills shipped with gems."""
    return Path(str(resources.files("gems.skills").joinpath("library")))


@dataclass
class SkillRegistry:
    """Skills by name, plus the errors of the files that could not be loaded."""

    skills: dict[str, Skill] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add_folder(self, root: Path) -> None:
        """Load every `<root>/<name>/SKILL.md`; a bad skill is recorded and skipped, never fatal."""
        if not root.is_dir():
            self.errors.append(f"{root}: skills folder does not exist")
            return
        for skill_md in sorted(root.glob("*/SKILL.md")):
            self.add_file(skill_md)

    def add_file(self, skill_md: Path) -> None:
        """Load one SKILL.md; a bad file or a duplicate name is recorded in `errors`, never raised."""
        try:
            skill = parse_skill_file(skill_md)
        except SkillError as exc:
            self.errors.append(str(exc))
            return
        if skill.name in self.skills:
            other = self.skills[skill.name].path
            self.errors.append(f"{skill_md}: duplicate skill name {skill.name!r} (already loaded from {other})")
            return
        self.skills[skill.name] = skill

    def get(self, name: str) -> Skill | None:
        return self.skills.get(name)

    def names(self) -> list[str]:
        return list(self.skills)

    def __len__(self) -> int:
        return len(self.skills)

    def manifest(self, names: list[str] | None = None) -> str:
        """Routing text: one `- name: description` line per skill."""
        chosen = [self.skills[n] for n in (names or self.names()) if n in self.skills]
        return "\n".join(f"- {s.name}: {s.description}" for s in chosen)


def registry_for(settings: GemsSettings) -> SkillRegistry:
    """The registry a run uses: the bundled library (unless `skills.bundled` is off) plus `skills.paths`."""
    return load_registry(tuple(settings.skills.paths), include_bundled=settings.skills.bundled)


def load_registry(paths: list[Path] | tuple[Path, ...] = (), include_bundled: bool = True) -> SkillRegistry:
    """Build a registry from the bundled library plus user folders (earlier folders win name clashes).

    Cached per folder contents: a SKILL.md added, removed or rewritten (a user's edit, an evolved library) is read
    on the next call.
    """
    roots = tuple(Path(p).expanduser().resolve() for p in paths)
    return _load_registry(roots, include_bundled, tuple(_fingerprint(root) for root in roots))


def _fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        return tuple((str(p), (s := p.stat()).st_mtime_ns, s.st_size) for p in sorted(root.glob("*/SKILL.md")))
    except OSError:
        return ()


@functools.lru_cache(maxsize=8)
def _load_registry(
    paths: tuple[Path, ...], include_bundled: bool, fingerprint: tuple[tuple[tuple[str, int, int], ...], ...]
) -> SkillRegistry:
    registry = SkillRegistry()
    if include_bundled:
        registry.add_folder(bundled_library())
    for root in paths:
        registry.add_folder(root)
    for error in registry.errors:
        log.warning("skipped skill: %s", error)
    return registry
