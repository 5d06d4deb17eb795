"""`gems memory`: list, search, show, forget, export and import the lessons learned across runs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from gems.configs import UsageError, load_settings
from gems.interfaces.cli import CONTEXT, config_option, short
from gems.memory.experiences import ExperienceStore
from gems.memory.links import TENANT_NAME

TENANTS = ("gems", "tenants")  # a tenant's lessons: ("gems", "tenants", NAME, "lessons"), as gems serve keeps them


def _tenant(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not TENANT_NAME.fullmatch(value):
        raise UsageError(f"--tenant {value!r}: a tenant is 1-64 letters, digits, '_' or '-' (an API key's name)")
    return value


def tenant_option() -> Any:
    return click.option(
        "--tenant",
        metavar="NAME",
        callback=_tenant,
        help="the lessons of the API key named NAME (GEMS_API_KEYS name:key, as gems serve keeps them); "
        "default: the shared lessons",
    )


def _lessons(ctx: click.Context, config: str | None, tenant: str | None) -> ExperienceStore:
    # `--config` and `--tenant` may come before the action (`gems memory --tenant a list`) or after it.
    group = ctx.obj or {}
    overrides = {"memory.tenant": tenant or group.get("tenant")}
    return ExperienceStore(load_settings(config or group.get("config"), overrides=overrides))


def _tenant_of(store: ExperienceStore) -> str | None:
    namespace: tuple[str, ...] = store.namespace
    return namespace[2] if namespace[:2] == TENANTS else None


def _whose(store: ExperienceStore) -> str:
    """Where the lessons are, and whose: `in PATH` or `of tenant NAME in PATH`."""
    tenant = _tenant_of(store)
    return f"of tenant {tenant} in {store.where}" if tenant else f"in {store.where}"


def _tenants(store: ExperienceStore) -> list[str]:
    """The tenants that have lessons in this store: ("gems", "tenants", NAME, "lessons")."""
    spaces = store.store.list_namespaces(prefix=TENANTS, limit=10_000)
    return sorted({ns[2] for ns in spaces if len(ns) == 4 and ns[3] == "lessons"})


@click.group(context_settings=CONTEXT)
@config_option()
@tenant_option()
@click.pass_context
def memory(ctx: click.Context, config: str | None, tenant: str | None) -> None:
    """List, search and manage the lessons learned across runs (--tenant NAME: one API key's lessons)."""
    ctx.obj = {"config": config, "tenant": tenant}


@memory.command("list")
@click.option("--limit", type=int, help="show at most N")
@config_option()
@tenant_option()
@click.pass_context
def list_(ctx: click.Context, limit: int | None, config: str | None, tenant: str | None) -> int:
    """Every lesson, newest first."""
    store = _lessons(ctx, config, tenant)
    lessons = store.list(limit=limit)
    for item in lessons:
        click.echo(
            f"{item.id}  {item.outcome:<11} {item.passed}/{item.total} in {item.rounds}  {short(item.prompt, 70)}"
        )
    click.echo(f"{len(lessons)} lesson(s) {_whose(store)}", err=True)
    others = [name for name in _tenants(store) if name != _tenant_of(store)]
    if others:  # lessons gems serve keeps per API key are not the shared ones: say where they are
        shown = ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
        click.echo(f"tenants with lessons here: {shown} (gems memory list --tenant NAME)", err=True)
    return 0


@memory.command()
@click.argument("query")
@click.option("-k", type=int, default=5, show_default=True, help="how many")
@config_option()
@tenant_option()
@click.pass_context
def search(ctx: click.Context, query: str, k: int, config: str | None, tenant: str | None) -> int:
    """Lessons whose prompts are most similar to QUERY."""
    for item, score in _lessons(ctx, config, tenant).search(query, k=k):
        click.echo(f"{item.id}  {score:.3f}  {short(item.prompt, 60)}\n    {short(item.text, 120)}")
    return 0


@memory.command()
@click.argument("lesson_id", metavar="ID")
@config_option()
@tenant_option()
@click.pass_context
def show(ctx: click.Context, lesson_id: str, config: str | None, tenant: str | None) -> int:
    """One lesson as JSON."""
    store = _lessons(ctx, config, tenant)
    item = store.get(lesson_id)
    if item is None:
        raise UsageError(f"no lesson with id {lesson_id!r} {_whose(store)}")
    click.echo(json.dumps(asdict(item), indent=2, ensure_ascii=False))
    return 0


@memory.command()
@click.argument("lesson_id", metavar="[ID]", required=False)
@click.option("--all", "all_", is_flag=True, help="forget every lesson")
@config_option()
@tenant_option()
@click.pass_context
def forget(ctx: click.Context, lesson_id: str | None, all_: bool, config: str | None, tenant: str | None) -> int:
    """Delete one lesson, or all with --all (of one tenant with --tenant)."""
    if all_ == bool(lesson_id):
        raise UsageError("give a lesson id or --all")
    store = _lessons(ctx, config, tenant)
    removed = store.clear() if all_ else store.delete([lesson_id or ""])
    if not all_ and not removed:
        raise UsageError(f"no lesson with id {lesson_id!r} {_whose(store)}")
    click.echo(f"forgot {removed} lesson(s) {_whose(store)}", err=True)
    return 0


@memory.command("export")
@click.argument("file")
@config_option()
@tenant_option()
@click.pass_context
def export_(ctx: click.Context, file: str, config: str | None, tenant: str | None) -> int:
    """Write every lesson to a JSONL file."""
    store = _lessons(ctx, config, tenant)
    count = store.export(Path(file))
    click.echo(f"exported {count} lesson(s) {_whose(store)} to {file}", err=True)
    return 0


@memory.command("import")
@click.argument("file")
@config_option()
@tenant_option()
@click.pass_context
def import_(ctx: click.Context, file: str, config: str | None, tenant: str | None) -> int:
    """Read lessons from a JSONL file written by export (into one tenant's lessons with --tenant)."""
    if not Path(file).is_file():
        raise UsageError(f"no such file: {file}")
    store = _lessons(ctx, config, tenant)
    count = store.import_(Path(file))
    click.echo(f"imported {count} lesson(s) into the lessons {_whose(store)}", err=True)
    return 0
