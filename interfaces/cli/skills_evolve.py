"""`gems skills evolve` and `gems skills apply`: evolve the skill library on held-out prompts, apply what passed."""

from __future__ import annotations

import click

from gems.configs import load_settings
from gems.interfaces.cli import CONTEXT, config_option, configs
from gems.interfaces.evolve import EvolveOptions, apply_library
from gems.interfaces.evolve import evolve as run_evolve


@click.command(context_settings=CONTEXT)
@click.option("--train", required=True, help="prompts whose runs' lessons drive the proposals (a bench prompt file)")
@click.option("--test", required=True, help="held-out prompts that decide each change (no prompt may be in --train)")
@config_option(multiple=True)
@click.option("--rounds", type=click.IntRange(1, 20), default=1, show_default=True, help="propose-and-test rounds")
@click.option("--out", default="gems-evolve", show_default=True, help="folder; a re-run continues with the next cycle")
@click.option("--proposals", type=click.IntRange(1, 10), default=3, show_default=True, help="changes asked per round")
@click.option("--margin", type=float, default=1.0, show_default=True, help="test score rise (0-100) a change needs")
@click.option("--max-drop", type=float, default=5.0, show_default=True, help="most any category may fall (0-100)")
@click.option("--concurrency", type=click.IntRange(1, 512), default=4, show_default=True, help="prompts in flight")
@click.pass_context
def evolve(
    ctx: click.Context,
    train: str,
    test: str,
    config: tuple[str, ...],
    rounds: int,
    out: str,
    proposals: int,
    margin: float,
    max_drop: float,
    concurrency: int,
) -> int:
    """Propose skill changes from training runs' lessons; keep those the --test prompts confirm.

    The library you use is never changed: accepted changes build OUT/library/, rejected ones go to OUT/rejected/,
    every decision to OUT/evolution.jsonl; see OUT/report.md. `gems skills apply OUT --to PATH` copies them.
    """
    settings = load_settings(configs(config) or ctx.obj)
    options = EvolveOptions(rounds, proposals, margin, max_drop, concurrency)
    summary = run_evolve(train, test, settings, out, options)
    accepted = [p["label"] for p in summary["proposals"] if p["decision"] == "accepted"]
    click.echo(f"{len(accepted)} accepted: {', '.join(accepted)}" if accepted else "no change accepted")
    return 0


@click.command(context_settings=CONTEXT)
@click.argument("folder")
@click.option("--to", "dest", required=True, help="the skills folder to write into (one of your skills.paths)")
@click.option("--all", "whole", is_flag=True, help="write the whole evolved library, not only what changed")
def apply(folder: str, dest: str, whole: bool) -> int:
    """Copy the skills a `gems skills evolve` run accepted (FOLDER) into a skills folder."""
    done = apply_library(folder, dest, whole)
    click.echo(f"wrote {len(done['written'])} skill(s) to {dest}: {', '.join(done['written']) or '-'}")
    if done["removed"]:
        click.echo(f"removed {', '.join(done['removed'])} from {dest}")
    if done["touches_bundled"] and not whole:
        click.echo(
            f"changes touch bundled skills ({', '.join(done['touches_bundled'])}): run with --all and set "
            "skills: {bundled: false} so the evolved versions replace them",
            err=True,
        )
    hint = "add it to skills.paths" + (" and set skills.bundled: false" if whole else "")
    click.echo(f"to use {dest}: {hint}", err=True)
    return 0
