"""`gems skills`: list, show, validate and scaffold SKILL.md skills; evolve the library and apply what was accepted."""

from __future__ import annotations

from pathlib import Path

import click

from gems.configs import UsageError, load_settings
from gems.interfaces.cli import CONTEXT, EXIT_ERROR, LazyGroup, config_option, short
from gems.skills import SkillRegistry, registry_for
from gems.skills.registry import NAME_RE

SKILL_TEMPLATE = """---
name: {name}
description: >-
  Say what this skill does and when to use it (the kinds of request that should trigger it), then when not to
  use it. The planner sees only this text when it decides, so be specific.
metadata:
  examples:
    - a request that should trigger this skill
---
# {title}

Instructions the planner follows to rewrite the request once it loads this skill:

1. Keep every object, number, attribute, relation and quoted text the user asked for.
2. ...

Return one paragraph, no lists.
"""


# The evolution commands load the bench and the graph: imported only when they run.
EVOLVE_COMMANDS = {
    "evolve": (
        "gems.interfaces.cli.skills_evolve",
        "evolve",
        "propose skill changes from lessons; keep those tests confirm",
    ),
    "apply": ("gems.interfaces.cli.skills_evolve", "apply", "copy what an evolve run accepted into a skills folder"),
}


@click.group(cls=LazyGroup, lazy=EVOLVE_COMMANDS, context_settings=CONTEXT)
@config_option()
@click.pass_context
def skills(ctx: click.Context, config: str | None) -> None:
    """List, show, validate and scaffold SKILL.md skills (skills.paths come from the config)."""
    ctx.obj = config


def _registry(ctx: click.Context, config: str | None) -> SkillRegistry:
    return registry_for(load_settings(config or ctx.obj))


@skills.command("list")
@config_option()
@click.pass_context
def list_(ctx: click.Context, config: str | None) -> int:
    """Every skill the planner can use."""
    registry = _registry(ctx, config)
    for skill in registry.skills.values():
        click.echo(f"{skill.name:<22} {short(skill.description, 90)}")
    click.echo(f"{len(registry)} skill(s); {len(registry.errors)} could not be loaded", err=True)
    for error in registry.errors:
        click.echo(f"gems: skipped: {error}", err=True)
    return 0


@skills.command()
@click.argument("name")
@config_option()
@click.pass_context
def show(ctx: click.Context, name: str, config: str | None) -> int:
    """One skill's description and instructions."""
    skill = _registry(ctx, config).get(name)
    if skill is None:
        raise UsageError(f"no skill named {name!r}; see gems skills list")
    click.echo(f"name: {skill.name}\npath: {skill.path}\ndescription: {skill.description}")
    if skill.resources():
        click.echo(f"resources: {', '.join(skill.resources())}")
    click.echo(f"\n{skill.body}")
    return 0


@skills.command()
@click.argument("path", required=False)
@config_option()
@click.pass_context
def validate(ctx: click.Context, path: str | None, config: str | None) -> int:
    """Check a skill folder, a SKILL.md, or (default) every configured skill."""
    if path:
        target = Path(path)
        registry = SkillRegistry()
        if target.is_file():
            registry.add_file(target)
        elif (target / "SKILL.md").is_file():
            registry.add_file(target / "SKILL.md")
        else:
            registry.add_folder(target)
    else:
        registry = _registry(ctx, config)
    for skill in registry.skills.values():
        click.echo(f"ok     {skill.name}  ({skill.path})")
    for error in registry.errors:
        click.echo(f"error  {error}")
    if not registry.skills and not registry.errors:
        click.echo("error  no SKILL.md found")
        return EXIT_ERROR
    return EXIT_ERROR if registry.errors else 0


@skills.command()
@click.argument("name")
@click.option("--dir", "folder", default="skills", show_default=True, help="where to create it")
@config_option()
def new(name: str, folder: str, config: str | None) -> int:
    """Scaffold a new skill folder NAME/SKILL.md."""
    if not NAME_RE.match(name) or len(name) > 64:
        raise UsageError(f"skill names are lowercase letters, digits and hyphens, got {name!r}")
    target = Path(folder) / name
    if target.exists():
        raise UsageError(f"{target} already exists")
    target.mkdir(parents=True)
    title = name.replace("-", " ").capitalize()
    (target / "SKILL.md").write_text(SKILL_TEMPLATE.format(name=name, title=title), encoding="utf-8")
    click.echo(target / "SKILL.md")
    click.echo(f"add {Path(folder).resolve()} to skills.paths in your config to use it", err=True)
    return 0
