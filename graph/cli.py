"""The `gems` command line: `gems generate "PROMPT"` runs the loop with live progress and writes the results.

Errors print one line saying what to fix and exit non-zero; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

RESUME_HINT = "progress is saved; continue with: gems generate --resume {thread_id}{config}"


def _short(text: str | None, width: int = 90) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def describe_update(node: str, update: dict[str, Any] | None) -> list[str]:
    """Human-readable progress lines for one node's state update (none for steps that did nothing)."""
    update = update or {}
    if node == "plan":
        lines = []
        trace = update.get("skill_trace")
        if trace is not None:
            offered = ", ".join(c["name"] for c in trace.get("offered", [])) or "none"
            lessons = len(update.get("lessons") or [])
            lines.append(f"plan       skill candidates: {offered}; {lessons} lesson(s) from earlier runs")
        for message in update.get("messages") or []:
            for call in getattr(message, "tool_calls", None) or []:
                lines.append(f"plan       calls {call['name']}({', '.join(map(str, call['args'].values()))})")
        return lines
    if node == "skills":
        return [
            f"skills     {m.name}: {'error: ' + _short(str(m.content), 70) if m.status == 'error' else 'ok'}"
            for m in update.get("messages") or []
        ]
    if node == "prepare":
        if update.get("skill"):
            return [f"prepare    skill {update['skill']}; first prompt: {_short(update.get('current_prompt'), 70)}"]
        return ["prepare    no skill; the first prompt is the request as written"]
    if node == "decompose":
        criteria = update.get("criteria") or []
        lines = [f"decompose  {len(criteria)} criteria"]
        lines += [f"             {i + 1}. {_short(q, 80)}" for i, q in enumerate(criteria)]
        return lines
    if node == "generate":
        refs = update.get("candidates") or []
        secs = (update.get("timings") or {}).get("generate", 0.0)
        ids = ", ".join(f"{r['path']} ({r['width']}x{r['height']}, seed {r.get('seed')})" for r in refs)
        return [f"generate   round {update.get('round')}: {ids} ({secs:.1f}s)"]
    if node == "verify":
        lines = []
        for v in update.get("verdicts") or []:
            mark = "yes" if v["passed"] else ("ERR" if v.get("error") and not v.get("answer") else "no ")
            lines.append(f"verify     {mark} {_short(v['criterion'], 80)}")
        return lines
    if node == "critique":
        lines = []
        for r in update.get("rounds") or []:
            total = len(r.get("passed", [])) + len(r.get("failed", []))
            lines.append(f"critique   round {r['round']}: {len(r.get('passed', []))}/{total} criteria passed")
        return lines
    if node == "compress":
        return [f"compress   {_short(r.get('experience'))}" for r in update.get("rounds") or []]
    if node == "refine":
        return [f"refine     {_short(update.get('current_prompt'))}"]
    if node == "finalize":
        final = update.get("final") or {}
        verdict = "success" if update.get("success") else "best so far"
        return [f"finalize   {verdict}: round {final.get('round')} ({final.get('passed')}/{final.get('total')} passed)"]
    if node == "learn":
        if update.get("lesson_id"):
            return [f"learn      lesson saved ({update['lesson_id'][:8]})"]
        return [f"learn      {w}" for w in update.get("warnings") or []]
    if node == "review" and update:
        return ["review     the reviewer's edits are applied"]
    return []


def _write_outputs(out_dir: Path, values: dict[str, Any], trajectory: dict[str, Any], store_root: Path) -> Path:
    from gems.memory.artifacts import ArtifactStore

    out_dir.mkdir(parents=True, exist_ok=True)
    final_png = out_dir / "final.png"
    image = (values.get("final") or {}).get("image") or {}
    if image.get("sha256"):
        shutil.copyfile(ArtifactStore(store_root).path_for(image["sha256"]), final_png)
    (out_dir / "trajectory.json").write_text(json.dumps(trajectory, indent=2, ensure_ascii=False) + "\n")
    return final_png


def cmd_generate(args: argparse.Namespace) -> int:
    """Run (or resume) one GEMS trajectory."""
    from gems.configs import load_settings

    prompt = (args.prompt or "").strip()
    if args.resume and args.thread_id and args.resume != args.thread_id:
        raise UsageError("give either --resume ID or --thread-id ID, not two different ids")
    if not args.resume and not prompt:
        raise UsageError('the prompt is empty: gems generate "a red cube left of a blue sphere"')

    settings = load_settings(args.config, overrides={"loop.max_rounds": args.max_rounds, "loop.seed": args.seed})

    # Heavy imports only after the arguments and config are known to be good.
    from gems.graph import build_graph, run_config
    from gems.graph.builder import continuation
    from gems.memory.checkpoint import open_checkpointer
    from gems.memory.trajectory import build_trajectory

    thread_id = args.resume or args.thread_id or uuid.uuid4().hex[:12]
    out_dir = Path(args.out) if args.out else Path("gems-out") / thread_id
    config = run_config(settings, thread_id)
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.perf_counter()

    with open_checkpointer(settings) as saver:
        graph = build_graph(checkpointer=saver)
        existing = graph.get_state(config)
        if args.resume:
            if not existing.values:
                raise UsageError(f"no run with thread id {thread_id!r} in {_where(settings)}")
            if prompt and prompt != existing.values.get("prompt"):
                raise UsageError(f"thread {thread_id} was started with a different prompt; drop the prompt to resume")
            pending, run_input = continuation(existing, existing.values.get("prompt") or "")
            say(f"resuming thread {thread_id}: {_short(existing.values.get('prompt'))}")
        else:
            if existing.values:
                raise UsageError(f"thread {thread_id} already exists; continue it with --resume {thread_id}")
            pending, run_input = True, {"prompt": prompt}
            say(f"thread {thread_id}: {_short(prompt)}")

        try:
            if pending:
                for node_updates in graph.stream(
                    run_input, config, context=settings, stream_mode="updates", durability="sync"
                ):
                    for node, update in node_updates.items():
                        for line in describe_update(node, update):
                            say(line)
        except KeyboardInterrupt:
            say(RESUME_HINT.format(thread_id=thread_id, config=_config_flag(args)))
            return EXIT_INTERRUPTED
        except Exception as exc:
            exc.add_note(RESUME_HINT.format(thread_id=thread_id, config=_config_flag(args)))
            raise

        values = graph.get_state(config).values

    trajectory = build_trajectory(values, thread_id=thread_id, settings=settings)
    trajectory["timings"]["wall_s"] = round(time.perf_counter() - started, 3)
    final_png = _write_outputs(out_dir, values, trajectory, settings.artifacts_dir)
    final = values.get("final") or {}
    status = "all criteria passed" if values.get("success") else "best attempt"
    say(f"{status}: round {final.get('round')} ({final.get('passed')}/{final.get('total')}) -> {final_png}")
    print(final_png)
    return 0


def _store(args: argparse.Namespace):
    from gems.configs import load_settings
    from gems.memory.experiences import ExperienceStore

    return ExperienceStore(load_settings(args.config))


def cmd_memory(args: argparse.Namespace) -> int:
    """Inspect and manage the cross-run lessons."""
    store = _store(args)
    action = args.memory_command
    if action == "list":
        lessons = store.list(limit=args.limit)
        for item in lessons:
            print(
                f"{item.id}  {item.outcome:<11} {item.passed}/{item.total} in {item.rounds}  {_short(item.prompt, 70)}"
            )
        print(f"{len(lessons)} lesson(s) in {store.where}", file=sys.stderr)
    elif action == "search":
        for item, score in store.search(args.query, k=args.k):
            print(f"{item.id}  {score:.3f}  {_short(item.prompt, 60)}\n    {_short(item.text, 120)}")
    elif action == "show":
        item = store.get(args.id)
        if item is None:
            raise UsageError(f"no lesson with id {args.id!r} in {store.where}")
        from dataclasses import asdict

        print(json.dumps(asdict(item), indent=2, ensure_ascii=False))
    elif action == "forget":
        if args.all == bool(args.id):
            raise UsageError("give a lesson id or --all")
        removed = store.clear() if args.all else store.delete([args.id])
        if not args.all and not removed:
            raise UsageError(f"no lesson with id {args.id!r} in {store.where}")
        print(f"forgot {removed} lesson(s)", file=sys.stderr)
    elif action == "export":
        count = store.export(Path(args.file))
        print(f"exported {count} lesson(s) to {args.file}", file=sys.stderr)
    elif action == "import":
        if not Path(args.file).is_file():
            raise UsageError(f"no such file: {args.file}")
        count = store.import_(Path(args.file))
        print(f"imported {count} lesson(s) into {store.where}", file=sys.stderr)
    return 0


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


def cmd_skills(args: argparse.Namespace) -> int:
    """List, show, validate and scaffold skills."""
    from gems.configs import load_settings
    from gems.skills import SkillRegistry, registry_for
    from gems.skills.registry import NAME_RE

    action = args.skills_command
    if action == "new":
        if not NAME_RE.match(args.name) or len(args.name) > 64:
            raise UsageError(f"skill names are lowercase letters, digits and hyphens, got {args.name!r}")
        folder = Path(args.dir) / args.name
        if folder.exists():
            raise UsageError(f"{folder} already exists")
        folder.mkdir(parents=True)
        title = args.name.replace("-", " ").capitalize()
        (folder / "SKILL.md").write_text(SKILL_TEMPLATE.format(name=args.name, title=title), encoding="utf-8")
        print(folder / "SKILL.md")
        print(f"add {Path(args.dir).resolve()} to skills.paths in your config to use it", file=sys.stderr)
        return 0
    if action == "validate" and args.path:
        target = Path(args.path)
        registry = SkillRegistry()
        if target.is_file():
            registry.add_file(target)
        elif (target / "SKILL.md").is_file():
            registry.add_file(target / "SKILL.md")
        else:
            registry.add_folder(target)
    else:
        settings = load_settings(args.config)
        registry = registry_for(settings)
    if action == "list":
        for skill in registry.skills.values():
            print(f"{skill.name:<22} {_short(skill.description, 90)}")
        print(f"{len(registry)} skill(s); {len(registry.errors)} could not be loaded", file=sys.stderr)
        for error in registry.errors:
            print(f"gems: skipped: {error}", file=sys.stderr)
        return 0
    if action == "show":
        skill = registry.get(args.name)
        if skill is None:
            raise UsageError(f"no skill named {args.name!r}; see gems skills list")
        print(f"name: {skill.name}\npath: {skill.path}\ndescription: {skill.description}")
        if skill.resources():
            print(f"resources: {', '.join(skill.resources())}")
        print(f"\n{skill.body}")
        return 0
    # validate
    for skill in registry.skills.values():
        print(f"ok     {skill.name}  ({skill.path})")
    for error in registry.errors:
        print(f"error  {error}")
    if not registry.skills and not registry.errors:
        print("error  no SKILL.md found")
        return EXIT_ERROR
    return EXIT_ERROR if registry.errors else 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the graph over HTTP with LangServe."""
    from gems.configs import load_settings

    settings = load_settings(args.config)
    from gems.graph.serve import create_app

    app = create_app(settings, max_concurrent=args.max_concurrent, queue_timeout_s=args.queue_timeout)
    import uvicorn

    auth = "API key required" if os.environ.get("GEMS_API_KEY") else "no auth (set GEMS_API_KEY to require one)"
    print(f"gems serving on http://{args.host}:{args.port}/gems ({auth})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark prompt set with one method and write results and reports."""
    from gems.configs import load_settings
    from gems.configs.settings import configured_value
    from gems.graph.bench.datasets import DatasetError
    from gems.graph.bench.report import headline
    from gems.graph.bench.runner import run_bench

    settings = load_settings(args.config, overrides={"loop.max_rounds": args.max_rounds, "loop.seed": args.seed})
    try:
        summary = run_bench(
            args.prompts,
            settings,
            args.method,
            args.out,
            concurrency=args.concurrency,
            limit=args.limit,
            first=args.first,
            sample_seed=args.sample_seed,
            scorer=args.scorer,
            search_n=args.search_n,
            images_per_prompt=args.images_per_prompt,
            # Bench runs are the paper's method: lessons across prompts only when a config file turns them on.
            lessons=configured_value(args.config, "memory.lessons") is True,
            force_new=args.force_new,
            progress=not args.quiet,
        )
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"{summary['method']} on {summary['dataset']}: {summary['finished']}/{summary['prompts']} prompts; "
        f"{headline(summary)}; report {Path(args.out) / 'report.html'}"
    )
    return EXIT_ERROR if summary["errors"] else 0


def cmd_bench_export(args: argparse.Namespace) -> int:
    """Write a bench run's images in the layout a benchmark's official script reads."""
    from gems.graph.bench.export import export_run

    count = export_run(args.run_dir, args.format, args.to, images_per_prompt=args.images_per_prompt)
    print(f"{count} prompts written to {args.to} in the {args.format} layout")
    return 0


def _where(settings: Any) -> str:
    kind = settings.storage.checkpointer
    return str(settings.sqlite_path) if kind == "sqlite" else f"the {kind} checkpointer"


def _config_flag(args: argparse.Namespace) -> str:
    configs = getattr(args, "config", None) or []
    return "".join(f" --config {c}" for c in ([configs] if isinstance(configs, str) else configs))


class UsageError(ValueError):
    """Bad command-line input."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gems",
        description="GEMS: plan, generate, critique and refine images with an agent loop, memory and skills.",
        epilog='Start with: gems generate "a red cube to the left of a blue sphere" --config cpu',
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = sub.add_parser("generate", help="run the loop for one prompt", description=cmd_generate.__doc__)
    gen.add_argument("prompt", nargs="?", default="", help="what to draw (omit with --resume)")
    gen.add_argument(
        "--config",
        action="append",
        help="YAML config file or preset name (default, openai, cpu); repeat to merge; env GEMS_CONFIG",
    )
    gen.add_argument("--out", help="output folder for final.png and trajectory.json (default gems-out/THREAD_ID)")
    gen.add_argument("--max-rounds", type=int, help="generator rounds before returning the best image (default 5)")
    gen.add_argument("--seed", type=int, help="base seed for reproducible generations")
    gen.add_argument("--thread-id", help="id for this run's checkpoint thread (default: random)")
    gen.add_argument("--resume", metavar="THREAD_ID", help="continue an interrupted run from its last checkpoint")
    gen.add_argument("--quiet", action="store_true", help="print only the final image path")
    gen.add_argument("--debug", action="store_true", help="show tracebacks")
    gen.set_defaults(func=cmd_generate)

    # `--config` works before or after the action (`gems memory --config X list` or `gems memory list --config X`).
    config_after = argparse.ArgumentParser(add_help=False)
    config_after.add_argument("--config", default=argparse.SUPPRESS, help="YAML config file or preset name")

    mem = sub.add_parser("memory", help="list, search and manage the lessons learned across runs")
    mem.add_argument("--config", help="YAML config file or preset name; env GEMS_CONFIG")
    mem_sub = mem.add_subparsers(dest="memory_command", metavar="ACTION", required=True)
    listing = mem_sub.add_parser("list", help="every lesson, newest first", parents=[config_after])
    listing.add_argument("--limit", type=int, help="show at most N")
    search = mem_sub.add_parser(
        "search", help="lessons whose prompts are most similar to QUERY", parents=[config_after]
    )
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="how many (default 5)")
    show = mem_sub.add_parser("show", help="one lesson as JSON", parents=[config_after])
    show.add_argument("id")
    forget = mem_sub.add_parser("forget", help="delete one lesson, or all with --all", parents=[config_after])
    forget.add_argument("id", nargs="?")
    forget.add_argument("--all", action="store_true")
    export = mem_sub.add_parser("export", help="write every lesson to a JSONL file", parents=[config_after])
    export.add_argument("file")
    imp = mem_sub.add_parser("import", help="read lessons from a JSONL file written by export", parents=[config_after])
    imp.add_argument("file")
    mem.set_defaults(func=cmd_memory)

    skills = sub.add_parser("skills", help="list, show, validate and scaffold SKILL.md skills")
    skills.add_argument("--config", help="YAML config file or preset name (for skills.paths); env GEMS_CONFIG")
    sk_sub = skills.add_subparsers(dest="skills_command", metavar="ACTION", required=True)
    sk_sub.add_parser("list", help="every skill the planner can use", parents=[config_after])
    sk_show = sk_sub.add_parser("show", help="one skill's description and instructions", parents=[config_after])
    sk_show.add_argument("name")
    sk_val = sk_sub.add_parser(
        "validate", help="check a skill folder, a SKILL.md, or (default) every configured skill", parents=[config_after]
    )
    sk_val.add_argument("path", nargs="?")
    sk_new = sk_sub.add_parser("new", help="scaffold a new skill folder", parents=[config_after])
    sk_new.add_argument("name")
    sk_new.add_argument("--dir", default="skills", help="where to create it (default ./skills)")
    skills.set_defaults(func=cmd_skills)

    serve = sub.add_parser("serve", help="serve the graph over HTTP (LangServe: /gems/invoke, /gems/stream, ...)")
    serve.add_argument("--config", help="YAML config file or preset name; env GEMS_CONFIG")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8321, help="port (default 8321)")
    serve.add_argument("--max-concurrent", type=int, default=2, help="runs executing at once (default 2)")
    serve.add_argument("--queue-timeout", type=float, default=30.0, help="seconds a request waits before 429")
    serve.set_defaults(func=cmd_serve)

    from gems.graph.bench.export import FORMATS
    from gems.graph.bench.methods import METHODS
    from gems.graph.bench.scoring import SCORERS

    bench = sub.add_parser(
        "bench",
        help="run a benchmark prompt set (GenEval, GenEval2, DPG, text, JSONL); 'bench export' for official scripts",
        description="Run a prompt set with one method. `gems bench export RUN_DIR --format F --to DIR` writes a "
        "run's images in the layout the benchmark's own scoring script reads.",
    )
    bench.add_argument("prompts", help="prompt file or folder (GenEval/GenEval2 .jsonl, DPG folder, .txt, .jsonl)")
    bench.add_argument("--config", action="append", help="YAML config or preset; repeat to merge (ablations/...)")
    bench.add_argument("--method", choices=METHODS, default="gems", help="method from the paper's tables")
    bench.add_argument("--out", required=True, help="output folder (re-run to continue an interrupted bench)")
    bench.add_argument("--concurrency", type=int, default=4, help="prompts in flight at once (default 4)")
    bench.add_argument("--limit", type=int, help="a stratified sample of K prompts (by atom count / tag / category)")
    bench.add_argument("--first", type=int, help="the first K prompts of the file instead")
    bench.add_argument("--sample-seed", type=int, default=0, help="seed of the --limit sample (default 0)")
    bench.add_argument("--scorer", choices=SCORERS, default="auto", help="default auto: Soft-TIFA for GenEval2")
    bench.add_argument("--search-n", type=int, default=5, help="candidates for --method search (default 5)")
    bench.add_argument("--images-per-prompt", type=int, default=1, help="samples per prompt (GenEval uses 4)")
    bench.add_argument("--max-rounds", type=int, help="override loop.max_rounds")
    bench.add_argument("--seed", type=int, help="base seed (default: drawn once and kept in run.json)")
    bench.add_argument("--force-new", action="store_true", help="clear a folder that holds another run")
    bench.add_argument("--quiet", action="store_true", help="no progress line")
    bench.set_defaults(func=cmd_bench)

    export = sub.add_parser(
        "bench-export", help=argparse.SUPPRESS, prog="gems bench export", description=cmd_bench_export.__doc__
    )
    export.add_argument("run_dir", help="a gems bench --out folder")
    export.add_argument("--format", required=True, choices=FORMATS, help="the official script's layout")
    export.add_argument("--to", required=True, help="folder to write")
    export.add_argument("--images-per-prompt", type=int, default=1, help="images per prompt (GenEval: 4; DPG: 1 or 4)")
    export.set_defaults(func=cmd_bench_export)
    # Reached as `gems bench export`; Python 3.11's argparse lists a SUPPRESSed sub-command as "==SUPPRESS==".
    sub._choices_actions = [a for a in sub._choices_actions if a.dest != "bench-export"]
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    from gems.configs import ConfigError
    from gems.graph.bench.datasets import DatasetError
    from gems.memory.artifacts import ArtifactError
    from gems.memory.embeddings import EmbeddingError
    from gems.memory.experiences import StoreError
    from gems.nodes.generators import GeneratorError
    from gems.nodes.mllm import MLLMError
    from gems.skills import SkillError

    return (
        ConfigError,
        UsageError,
        MLLMError,
        GeneratorError,
        ArtifactError,
        SkillError,
        StoreError,
        EmbeddingError,
        DatasetError,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gems` console script."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["bench", "export"]:  # `gems bench export RUN_DIR`: bench's other positional is a prompt file
        argv = ["bench-export", *argv[2:]]
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except Exception as exc:
        if args.debug:
            raise
        known = isinstance(exc, _known_errors())
        message = str(exc) if known else f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        print(f"gems: error: {message}", file=sys.stderr)
        for note in getattr(exc, "__notes__", []):
            print(f"gems: {note}", file=sys.stderr)
        if not known:
            print("gems: run again with --debug for the traceback", file=sys.stderr)
        from gems.configs import ConfigError

        return EXIT_USAGE if isinstance(exc, UsageError | ConfigError) else EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
