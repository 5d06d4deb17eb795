"""`gems memory`: list, search, show, forget, export and import the lessons learned across runs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from gems.configs import UsageError, load_settings
from gems.interfaces.cli import CONTEXT, config_option, short
from gems.memory.experiences import ExperienceStore


def _lessons(ctx: click.Context, config: str | None) -> ExperienceStore:
    # `--config` may come before the action (`gems memory --config X list`) or after it.
    return ExperienceStore(load_settings(config or ctx.obj))


@click.group(context_settings=CONTEXT)
@config_option()
@click.pass_context
def memory(ctx: click.Context, config: str | None) -> None:
    """List, search and manage the lessons learned across runs."""
    ctx.obj = config


@memory.command("list")
@click.option("--limit", type=int, help="show at most N")
@config_option()
@click.pass_context
def list_(ctx: click.Context, limit: int | None, config: str | None) -> int:
    """Every lesson, newest first."""
    store = _lessons(ctx, config)
    lessons = store.list(limit=limit)
    for item in lessons:
        click.echo(
            f"{item.id}  {item.outcome:<11} {item.passed}/{item.total} in {item.rounds}  {short(item.prompt, 70)}"
        )
    click.echo(f"{len(lessons)} lesson(s) in {store.where}", err=True)
    return 0


@memory.command()
@click.argument("query")
@click.option("-k", type=int, default=5, show_default=True, help="how many")
@config_option()
@click.pass_context
def search(ctx: click.Context, query: str, k: int, config: str | None) -> int:
    """Lessons whose prompts are most similar to QUERY."""
    for item, score in _lessons(ctx, config).search(query, k=k):
        click.echo(f"{item.id}  {score:.3f}  {short(item.prompt, 60)}\n    {short(item.text, 120)}")
    return 0


@memory.command()
@click.argument("lesson_id", metavar="ID")
@config_option()
@click.pass_context
def show(ctx: click.Context, lesson_id: str, config: str | None) -> int:
    """One lesson as JSON."""
    store = _lessons(ctx, config)
    item = store.get(lesson_id)
    if item is None:
        raise UsageError(f"no lesson with id {lesson_id!r} in {store.where}")
    click.echo(json.dumps(asdict(item), indent=2, ensure_ascii=False))
    return 0


@memory.command()
@click.argument("lesson_id", metavar="[ID]", required=False)
@click.option("--all", "all_", is_flag=True, help="forget every lesson")
@config_option()
@click.pass_context
def forget(ctx: click.Context, lesson_id: str | None, all_: bool, config: str | None) -> int:
    """Delete one lesson, or all with --all."""
    if all_ == bool(lesson_id):
        raise UsageError("give a lesson id or --all")
    store = _lessons(ctx, config)
    removed = store.clear() if all_ else store.delete([lesson_id or ""])
    if not all_ and not removed:
        raise UsageError(f"no lesson with id {lesson_id!r} in {store.where}")
    click.echo(f"forgot {removed} lesson(s)", err=True)
    return 0


@memory.command("export")
@click.argument("file")
@config_option()
@click.pass_context
def export_(ctx: click.Context, file: str, config: str | None) -> int:
    """Write every lesson to a JSONL file."""
    count = _lessons(ctx, config).export(Path(file))
    click.echo(f"exported {count} lesson(s) to {file}", err=True)
    return 0


@memory.command("import")
@click.argument("file")
@config_option()
@click.pass_context
def import_(ctx: click.Context, file: str, config: str | None) -> int:
    """Read lessons from a JSONL file written by export."""
    if not Path(file).is_file():
        raise UsageError(f"no such file: {file}")
    store = _lessons(ctx, config)
    count = store.import_(Path(file))
    click.echo(f"imported {count} lesson(s) into {store.where}", err=True)
    return 0
