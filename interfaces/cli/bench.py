"""`gems bench PROMPTS ...` runs a prompt set; `gems bench merge` joins shards; `gems bench export` writes the
official layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gems.configs import load_settings
from gems.configs.loading import configured_value
from gems.interfaces.benchmarks.export import FORMATS, export_run
from gems.interfaces.benchmarks.merge import merge_runs
from gems.interfaces.benchmarks.methods import METHODS
from gems.interfaces.benchmarks.report import headline
from gems.interfaces.benchmarks.runner import run_bench
from gems.interfaces.benchmarks.scoring import SCORERS
from gems.interfaces.benchmarks.selection import parse_shard
from gems.interfaces.cli import CONTEXT, EXIT_ERROR, config_option, configs


class _BenchGroup(click.Group):
    """`gems bench export ...` is a sub-command; anything else is the run command's arguments."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in self.commands:
            return super().resolve_command(ctx, args)
        return "run", self.commands["run"], args

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(
            "gems bench",
            "PROMPTS --out DIR [OPTIONS]  |  gems bench merge SHARD_DIR... --out DIR  |  gems bench export RUN_DIR ...",
        )


@click.group(
    cls=_BenchGroup,
    context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_interspersed_args": False},
    invoke_without_command=False,
)
def bench() -> None:
    """Run a benchmark prompt set (GenEval, GenEval2, DPG, text, JSONL) with one method.

    `gems bench PROMPTS --out DIR ...` (see `gems bench run --help`); `gems bench merge SHARD_DIR... --out DIR` joins
    the folders of `--shard K/N` runs; `gems bench export RUN_DIR --format F --to DIR` writes a run's images in the
    layout the benchmark's own scoring script reads.
    """


@bench.command(context_settings=CONTEXT)
@click.argument("prompts")
@config_option(multiple=True)
@click.option(
    "--method", type=click.Choice(METHODS), default="gems", show_default=True, help="row of the paper's tables"
)
@click.option("--out", required=True, help="run folder (re-run to continue an interrupted bench)")
@click.option(
    "--concurrency", type=click.IntRange(1, 4096), default=4, show_default=True,
    help="prompts in flight at once (one event loop: 256 is fine; the servers set the real pace)",
)  # fmt: skip
@click.option("--shard", help="K/N: run every N-th prompt from the K-th (one machine's share); see `gems bench merge`")
@click.option("--limit", type=int, help="a stratified sample of K prompts (by atom count / tag / category)")
@click.option("--first", type=int, help="the first K prompts of the file instead")
@click.option("--sample-seed", type=int, default=0, show_default=True, help="seed of the --limit sample")
@click.option(
    "--scorer", type=click.Choice(SCORERS), default="auto", show_default=True, help="auto: Soft-TIFA for GenEval2"
)
@click.option("--search-n", type=int, default=5, show_default=True, help="candidates for --method search")
@click.option("--images-per-prompt", type=int, default=1, show_default=True, help="samples per prompt (GenEval: 4)")
@click.option("--max-rounds", type=int, help="override loop.max_rounds")
@click.option("--seed", type=int, help="base seed (default: drawn once and kept in run.json)")
@click.option(
    "--judge-backend", type=click.Choice(["openai", "transformers"]),
    help="override judge.backend: transformers runs the judge (judge.model) in this process, no server",
)  # fmt: skip
@click.option("--force-new", is_flag=True, help="clear a folder that holds another run")
@click.option("--quiet", is_flag=True, help="no progress line")
def run(prompts: str, config: tuple[str, ...], **opts: Any) -> int:
    """Run PROMPTS (a GenEval/GenEval2 .jsonl, a DPG folder, a .txt or .jsonl) and write results and reports."""
    overrides = {
        "loop.max_rounds": opts["max_rounds"],
        "loop.seed": opts["seed"],
        "judge.backend": opts["judge_backend"],
    }
    settings = load_settings(configs(config), overrides=overrides)
    summary = run_bench(
        prompts,
        settings,
        opts["method"],
        opts["out"],
        concurrency=opts["concurrency"],
        limit=opts["limit"],
        first=opts["first"],
        sample_seed=opts["sample_seed"],
        scorer=opts["scorer"],
        search_n=opts["search_n"],
        images_per_prompt=opts["images_per_prompt"],
        # Bench runs are the paper's method: lessons across prompts only when a config file turns them on.
        lessons=configured_value(configs(config), "memory.lessons") is True,
        force_new=opts["force_new"],
        progress=not opts["quiet"],
        shard=parse_shard(opts["shard"]),
    )
    click.echo(
        f"{summary['method']} on {summary['dataset']}: {summary['finished']}/{summary['prompts']} prompts; "
        f"{headline(summary)}; report {Path(opts['out']) / 'report.html'}"
    )
    return EXIT_ERROR if summary["errors"] else 0


@bench.command("export", context_settings=CONTEXT)
@click.argument("run_dir")
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS), help="the official script's layout")
@click.option("--to", required=True, help="folder to write")
@click.option("--images-per-prompt", type=int, default=1, show_default=True, help="GenEval: 4; DPG: 1 or 4")
@click.option("--prompts", help="the run's prompt file, if it has moved since (checked against run.json's digest)")
def export(run_dir: str, fmt: str, to: str, images_per_prompt: int, prompts: str | None) -> int:
    """Write a bench run's images in the layout a benchmark's official script reads."""
    count = export_run(run_dir, fmt, to, images_per_prompt=images_per_prompt, prompts=prompts)
    click.echo(f"{count} prompts written to {to} in the {fmt} layout")
    return 0


@bench.command("merge", context_settings=CONTEXT)
@click.argument("shard_dirs", nargs=-1, required=True)
@click.option("--out", required=True, help="folder for the merged run (rebuilt from the shards on each merge)")
def merge(shard_dirs: tuple[str, ...], out: str) -> int:
    """Join the folders of `gems bench --shard 1/N ... N/N` into one run folder with one report."""
    summary = merge_runs(list(shard_dirs), out)
    click.echo(
        f"{summary['shards']} shards merged: {summary['finished']}/{summary['prompts']} prompts; "
        f"{headline(summary)}; report {Path(out) / 'report.html'}"
    )
    return EXIT_ERROR if summary["errors"] or summary["finished"] < summary["prompts"] else 0
