"""The `gems` command line (click): `gems generate "PROMPT"`, `memory`, `skills`, `serve`, `serve-generator`, `bench`.

Each command lives in its own module and is imported only when it runs, so `gems --help` and the light commands
do not pay for LangGraph, torch or Chroma. Errors print one line (`gems: error: ...`) and exit 2 for input the user
can correct, 1 otherwise; `--debug` shows the traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys
import threading
from typing import Any, NoReturn

import click

from gems.configs.errors import GemsError, one_line, short

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# name -> (module, attribute, one-line help): the help is here so listing commands imports none of them.
COMMANDS = {
    "generate": ("gems.interfaces.cli.generate", "generate", "run the loop for one prompt"),
    "memory": ("gems.interfaces.cli.memory", "memory", "list, search and manage the lessons learned across runs"),
    "skills": ("gems.interfaces.cli.skills", "skills", "list, show, validate, scaffold and evolve SKILL.md skills"),
    "serve": ("gems.interfaces.cli.serve", "serve", "serve the graph over HTTP (LangServe: /gems/invoke, ...)"),
    "serve-generator": (
        "gems.interfaces.cli.serve_generator",
        "serve_generator",
        "serve the diffusers model on Ray Serve: replicas per GPU, batching across runs",
    ),
    "bench": ("gems.interfaces.cli.bench", "bench", "run a benchmark prompt set; 'bench export' for official scripts"),
}
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


class LazyGroup(click.Group):
    """A group whose sub-commands in `lazy` (name -> module, attribute, help) are imported on use."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str, str]] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy = COMMANDS if lazy is None else lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *self.lazy]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in self.lazy:
            return command
        module, attr, _ = self.lazy[cmd_name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, cmd.get_short_help_str(80)) for name, cmd in self.commands.items() if not cmd.hidden]
        rows += [(name, text) for name, (_, _, text) in self.lazy.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup, context_settings=CONTEXT, epilog='Start with: gems generate "a red cube left of a blue sphere"'
)
@click.option("--debug", is_flag=True, help="show tracebacks")
def cli(debug: bool) -> None:
    """GEMS: plan, generate, critique and refine images with an agent loop, memory and skills."""


def config_option(multiple: bool = False) -> Any:
    """`--config FILE|PRESET` (repeatable where configs merge); unset: `GEMS_CONFIG`, then the defaults."""
    text = "YAML config file or preset name (default, openai, cpu); env GEMS_CONFIG"
    return click.option("--config", "config", multiple=multiple, help=text + ("; repeat to merge" if multiple else ""))


def configs(value: Any) -> list[str] | str | None:
    """A click `--config` value as `load_settings` takes it (None lets GEMS_CONFIG apply)."""
    if isinstance(value, tuple | list):
        return list(value) or None
    return value or None


# LangGraph notes every error raised in a node with the task's name and id: internal, never for the user.
_TASK_NOTE = "During task with name "


def say_error(message: str) -> None:
    click.echo(f"gems: error: {message}", err=True)


def run() -> NoReturn:
    """The `gems` console script: `main()`, then the process ends without tearing the interpreter down.

    Freeing every loaded module (LangGraph, Chroma, numpy, the openai types) takes 0.3-0.8 s at exit and does
    nothing a finished command needs. The steps of a normal exit that do matter run as usual: non-daemon threads
    are waited for (idle pool workers end), atexit handlers run, the streams are flushed.
    """
    code = main()
    wait_for_threads = getattr(threading, "_shutdown", None)  # CPython's own first step of an exit
    if wait_for_threads is None:
        sys.exit(code)
    wait_for_threads()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (`run` is the console script)."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        result = cli.main(args=args, prog_name="gems", standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help and friends
        return exc.exit_code
    except click.exceptions.Abort:
        return EXIT_INTERRUPTED
    except click.exceptions.NoArgsIsHelpError as exc:  # `gems` or `gems bench` alone: the help, as argparse did
        click.echo(exc.format_message())
        return EXIT_USAGE
    except click.ClickException as exc:  # bad flags, missing arguments
        say_error(exc.format_message())
        return exc.exit_code
    except Exception as exc:
        if debug:
            raise
        known = isinstance(exc, GemsError)
        # A GemsError is the message to show, whole; anything else is named and kept short.
        lines = getattr(exc, "lines", None) or [str(exc) if known else f"{type(exc).__name__}: {short(str(exc), 300)}"]
        for line in lines:
            say_error(one_line(line))
        for note in getattr(exc, "__notes__", []):
            if not note.startswith(_TASK_NOTE):
                click.echo(f"gems: {one_line(note)}", err=True)
        if not known:
            click.echo("gems: run again with --debug for the traceback", err=True)
        return exc.exit_code if isinstance(exc, GemsError) else EXIT_ERROR
    return result if isinstance(result, int) else 0
