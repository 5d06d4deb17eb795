"""`gems generate`: run (or resume) one GEMS trajectory with live progress; write `final.png`, `trajectory.json`
and `index.html` (the run as a page, its images in `images/`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import click
from filelock import FileLock, Timeout

from gems.configs import UsageError, load_settings
from gems.configs.loading import RESUME_IGNORES, RUN_OPTIONS, settings_digest
from gems.graph import build_graph, continuation, run_config
from gems.graph import run_input as new_run
from gems.interfaces.cli import CONTEXT, EXIT_INTERRUPTED, config_option, configs, short
from gems.interfaces.cli.checks import CheckFailed, check_run
from gems.interfaces.pages import copied_beside, run_page
from gems.memory.aio import run_main
from gems.memory.artifacts import ArtifactStore
from gems.memory.checkpoint import open_checkpointer
from gems.memory.store import open_store
from gems.memory.trajectory import run_result

RESUME_HINT = "progress is saved; continue with: {command}"


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
        for message in update.get("planner_messages") or []:  # records (see nodes.plan.as_records)
            for call in message.get("tool_calls") or []:
                lines.append(f"plan       calls {call['name']}({', '.join(map(str, call['args'].values()))})")
        return lines
    if node == "skills":
        lines = []
        for m in update.get("planner_messages") or []:
            failed = m.get("status") == "error"
            lines.append(
                f"skills     {m.get('name')}: {'error: ' + short(str(m.get('content')), 70) if failed else 'ok'}"
            )
        return lines
    if node == "prepare":
        if update.get("skill"):
            return [f"prepare    skill {update['skill']}; first prompt: {short(update.get('current_prompt'), 70)}"]
        return ["prepare    no skill; the first prompt is the request as written"]
    if node == "decompose":
        criteria = update.get("criteria") or []
        lines = [f"decompose  {len(criteria)} criteria"]
        lines += [f"             {i + 1}. {short(q, 80)}" for i, q in enumerate(criteria)]
        return [*lines, *_warnings(update)]
    if node == "generate":
        refs = update.get("candidates") or []
        secs = (update.get("timings") or {}).get("generate", 0.0)
        edited = any(r.get("edit") for r in refs)
        made = ", ".join(f"{r['width']}x{r['height']} seed {r.get('seed')} ({r['sha256'][:12]})" for r in refs)
        verb = "edit      " if edited else "generate  "
        noun = "edited image" if edited else ("image" if len(refs) == 1 else "images")
        return [f"{verb} round {update.get('round')}: {noun} {made} ({secs:.1f}s)"]
    if node == "verify":
        lines = []
        for v in update.get("verdicts") or []:
            mark = "yes" if v["passed"] else ("ERR" if v.get("error") and not v.get("answer") else "no ")
            lines.append(f"verify     {mark} {short(v['criterion'], 80)}")
        return lines
    if node == "critique":
        lines = []
        for r in update.get("rounds") or []:
            total = len(r.get("passed", [])) + len(r.get("failed", []))
            line = f"critique   round {r['round']}: {len(r.get('passed', []))}/{total} criteria passed"
            if r.get("base_round") and "kept" in r:
                changes = f"{len(r['kept'])} kept, {len(r['fixed'])} fixed, {len(r['broken'])} broken"
                line += f" ({changes} vs round {r['base_round']})"
            lines.append(line)
        return lines
    if node in ("compress", "refine"):
        # loop.compress merged: the refiner writes the round's experience with the next prompt.
        lines = [
            f"{node:<10} round {r.get('round')} experience: {short(r.get('experience'), 80) or '(empty)'}"
            for r in update.get("rounds") or []
        ]
        if node == "compress":
            return lines
        action = update.get("action") or {}
        why = f" (why: {short(action['reason'], 60)})" if action.get("reason") else ""
        text = short(update.get("current_prompt")) or "(empty)"
        if action.get("mode") == "edit":
            line = f"refine     edit round {action.get('base_round')}'s image: {text}"
        else:
            line = f"refine     next prompt: {text}"
        return [*lines, line + why, *_warnings(update)]
    if node == "intake":
        lines = []
        for turn in update.get("turns") or []:  # a new request on a thread that answered one before
            earlier = short(turn.get("request"), 40)
            lines.append(f'intake     follow-up to "{earlier}", as a whole request: {short(update.get("prompt"), 70)}')
        if (update.get("action") or {}).get("mode") == "edit":
            what = "the attached image" if update.get("references") else "the earlier answer's image"
            lines.append(f"intake     round 1 edits {what}: {short(update.get('current_prompt'), 70)}")
        return lines
    if node == "finalize":
        final = update.get("final") or {}
        verdict = {True: "success", None: "unverified"}.get(update.get("success"), "best so far")
        done = f"finalize   {verdict}: round {final.get('round')} ({final.get('passed')}/{final.get('total')} passed)"
        return [done, *_warnings(update)]
    if node == "learn":
        if update.get("lesson_id"):
            return [f"learn      lesson saved ({update['lesson_id'][:8]})"]
        return [f"learn      {w}" for w in update.get("warnings") or []]
    if node == "review" and update:
        return ["review     the reviewer's edits are applied"]
    return []


def _warnings(update: dict[str, Any]) -> list[str]:
    return [f"warning    {short(w, 110)}" for w in update.get("warnings") or []]


class Progress:
    """The run's progress on stderr: lines for node updates, and the generator's loading and denoising steps.

    Steps show as one line rewritten in place on a terminal, and as a line per quarter of the steps elsewhere (a log
    file, a pipe). `stream=None` prints nothing (--quiet).
    """

    def __init__(self, stream: TextIO | None, round_no: int = 0):
        self.stream = stream
        self.tty = bool(stream is not None and stream.isatty())
        self.round = round_no  # the last round generated: steps belong to the next one
        self.showing = False  # a step line is on the terminal, to be replaced by the next line
        self.quarter = -1

    def say(self, line: str) -> None:
        if self.stream is None:
            return
        if self.showing:
            self.stream.write("\r\x1b[K")
            self.showing = False
        print(line, file=self.stream, flush=True)

    def end_line(self) -> None:
        """Finish a step line left on the terminal, so what is printed next starts a line of its own."""
        if self.stream is not None and self.showing:
            self.stream.write("\n")
            self.stream.flush()
            self.showing = False

    def update(self, node: str, update: dict[str, Any] | None) -> None:
        if node == "generate" and update and update.get("round"):
            self.round = int(update["round"])
        for line in describe_update(node, update):
            self.say(line)

    def custom(self, chunk: Any) -> None:
        """An event a node wrote to the custom stream; only the generator's are shown."""
        if not isinstance(chunk, dict) or chunk.get("event") != "generator":
            return
        stage, model = chunk.get("stage"), chunk.get("model")
        if stage == "loading":
            self.say(f"generate   loading {model} on {chunk.get('device')} ...")
        elif stage == "loaded":
            self.say(f"generate   loaded {model} in {float(chunk.get('seconds') or 0):.1f}s")
        elif stage == "step":
            self._step(chunk)

    def _step(self, chunk: dict[str, Any]) -> None:
        step, steps = int(chunk.get("step") or 0), int(chunk.get("steps") or 0)
        verb = "edit      " if chunk.get("task") == "edit" else "generate  "
        line = f"{verb} round {self.round + 1}: step {step}/{steps or '?'}"
        if self.stream is None:
            return
        if self.tty:
            self.stream.write(("\r\x1b[K" if self.showing else "") + line)
            self.stream.flush()
            self.showing = True
            return
        if step == 1:  # a new call (one per candidate where the pipeline cannot batch)
            self.quarter = -1
        quarter = step * 4 // steps if steps else step
        if quarter > self.quarter or step == steps:  # the first step, then each quarter, and the last
            self.quarter = quarter
            self.say(line)


def _write_outputs(out_dir: Path, values: dict[str, Any], trajectory: dict[str, Any], store_root: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    final_png = out_dir / "final.png"
    image = (values.get("final") or {}).get("image") or {}
    if image.get("sha256"):
        shutil.copyfile(ArtifactStore(store_root).path_for(image["sha256"]), final_png)
    (out_dir / "trajectory.json").write_text(json.dumps(trajectory, indent=2, ensure_ascii=False) + "\n")
    # A page to look at, its images beside it.
    (out_dir / "index.html").write_text(run_page(trajectory, copied_beside(out_dir)), encoding="utf-8")
    return final_png


@contextlib.contextmanager
def _thread_lock(settings: Any, thread_id: str) -> Iterator[None]:
    """One process per thread on this machine: a second `--resume` of a running thread is refused, not run twice."""
    locks = settings.data_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(locks / f"{hashlib.sha256(thread_id.encode()).hexdigest()[:32]}.lock")  # any id, a safe name
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UsageError(f"thread {thread_id} is being run by another process; wait for it to finish") from None
    try:
        yield
    finally:
        lock.release()


def resume_command(thread_id: str, config: tuple[str, ...], out_dir: Path, refine_mode: str | None) -> str:
    """The command that continues this run as it was started, from any folder: the same configs (files as absolute
    paths, presets by name), the output folder (absolute) and refine mode (round budget, seed and candidates are
    pinned in the thread itself)."""
    words = ["gems", "generate", "--resume", thread_id]
    for name in config:
        words += ["--config", str(Path(name).resolve()) if Path(name).is_file() else name]
    words += ["--out", str(out_dir.resolve())]
    if refine_mode:
        words += ["--refine-mode", refine_mode]
    return " ".join(shlex.quote(word) for word in words)


def _where(settings: Any) -> str:
    kind = settings.storage.checkpointer
    return str(settings.sqlite_path) if kind == "sqlite" else f"the {kind} checkpointer"


async def _run(
    settings: Any, thread_id: str, prompt: str, resume: bool, progress: Progress, hint: str, saved: list[bool]
) -> dict[str, Any]:
    """Start or resume the thread, printing its progress; returns the thread's final values.

    `saved` becomes `[True]` once the thread exists in the checkpointer (the resume hint then holds).
    """
    run_cfg = run_config(settings, thread_id)
    with _thread_lock(settings, thread_id):
        async with open_checkpointer(settings, asynchronous=True) as saver:
            graph = build_graph(checkpointer=saver, store=open_store(settings))
            existing = await graph.aget_state(run_cfg)
            if resume:
                pending, run_input = _resumed(existing, settings, thread_id, prompt, progress.say)
                progress.round = int(existing.values.get("round") or 0)
                saved[:] = [True]
            else:
                if existing.values:
                    raise UsageError(f"thread {thread_id} already exists; continue it with --resume {thread_id}")
                pending, run_input = True, new_run(prompt, settings)
                progress.say(f"thread {thread_id}: {short(prompt)}")
            try:
                if pending:
                    # Endpoints and weights before the first model call: one line per problem, nothing spent.
                    found = await check_run(settings)
                    for line in found.notes:  # what passed too: the problems may not be all there is to fix
                        progress.say(line)
                    if found.problems:
                        raise CheckFailed(found.problems)
                    saved[:] = [True]
                    # subgraphs=True: the planner's own steps (skill candidates, tool calls) show too; "custom":
                    # the generator's loading and denoising steps.
                    async for _, mode, chunk in graph.astream(
                        run_input, run_cfg, context=settings, stream_mode=["updates", "custom"], durability="sync",
                        subgraphs=True,
                    ):  # fmt: skip
                        if mode == "custom":
                            progress.custom(chunk)
                            continue
                        for node, update in chunk.items():
                            progress.update(node, update)
            except Exception as exc:
                if saved[0]:
                    exc.add_note(hint)
                raise
            return (await graph.aget_state(run_cfg)).values


def _resumed(existing: Any, settings: Any, thread_id: str, prompt: str, say: Any) -> tuple[bool, Any]:
    """How to continue a thread named by --resume; refuses an unknown thread or another prompt."""
    if not existing.values:
        raise UsageError(f"no run with thread id {thread_id!r} in {_where(settings)}")
    if prompt and prompt != existing.values.get("prompt"):
        raise UsageError(f"thread {thread_id} was started with a different prompt; drop the prompt to resume")
    say(f"resuming thread {thread_id}: {short(existing.values.get('prompt'))}")
    started_with = existing.values.get("config_digest")
    if started_with and started_with != settings_digest(settings, RESUME_IGNORES | RUN_OPTIONS):
        # Endpoints, keys and timeouts may move; models, sizes and loop settings should not.
        say(f"warning    thread {thread_id} was started with other models or loop settings; "
            f"the rest of it runs with this config")  # fmt: skip
    return continuation(existing, existing.values.get("prompt") or "", settings)


@click.command(context_settings=CONTEXT)
@click.argument("prompt", required=False, default="")
@config_option(multiple=True)
@click.option("--out", help="output folder for final.png, trajectory.json, index.html (default gems-out/THREAD_ID)")
@click.option("--max-rounds", type=int, help="generator rounds before returning the best image (default 5)")
@click.option("--seed", type=int, help="base seed for reproducible generations")
@click.option(
    "--refine-mode",
    type=click.Choice(["regenerate", "edit", "auto"]),
    help="regenerate (a new prompt each round, the paper), edit (fix the best image so far), auto (the refiner "
    "chooses); edit and auto need an editor: in the config",
)
@click.option("--thread-id", help="id for this run's checkpoint thread (default: random)")
@click.option("--resume", metavar="THREAD_ID", help="continue an interrupted run from its last checkpoint")
@click.option("--quiet", is_flag=True, help="print only the final image path")
@click.option("--debug", is_flag=True, hidden=True, help="show tracebacks")
def generate(
    prompt: str,
    config: tuple[str, ...],
    out: str | None,
    max_rounds: int | None,
    seed: int | None,
    refine_mode: str | None,
    thread_id: str | None,
    resume: str | None,
    quiet: bool,
    debug: bool,
) -> int:
    """Run (or resume) one GEMS trajectory for PROMPT (omit PROMPT with --resume)."""
    prompt = (prompt or "").strip()
    if resume and thread_id and resume != thread_id:
        raise UsageError("give either --resume ID or --thread-id ID, not two different ids")
    if not resume and not prompt:
        raise UsageError('the prompt is empty: gems generate "a red cube left of a blue sphere"')
    overrides = {"loop.max_rounds": max_rounds, "loop.seed": seed, "loop.refine_mode": refine_mode}
    settings = load_settings(configs(config), overrides=overrides)

    thread_id = resume or thread_id or uuid.uuid4().hex[:12]
    out_dir = Path(out) if out else Path("gems-out") / thread_id
    progress = Progress(None if quiet else sys.stderr)
    hint = RESUME_HINT.format(command=resume_command(thread_id, config, out_dir, refine_mode))
    saved = [False]
    started = time.perf_counter()
    try:
        # One event loop for the run: a deadline or Ctrl-C cancels the calls in flight, nothing is left reading.
        values = run_main(_run(settings, thread_id, prompt, bool(resume), progress, hint, saved))
    except BaseException as exc:
        progress.end_line()  # an error line, the hint or a traceback starts a line of its own
        if not isinstance(exc, KeyboardInterrupt):
            raise
        # Shown even with --quiet, like an error: it says how to go on.
        click.echo(f"gems: {hint}" if saved[0] else "gems: interrupted before the run started", err=True)
        return EXIT_INTERRUPTED

    trajectory = run_result(values, thread_id=thread_id, settings=settings)
    trajectory["timings"]["wall_s"] = round(time.perf_counter() - started, 3)
    final_png = _write_outputs(out_dir, values, trajectory, settings.artifacts_dir)
    final = values.get("final") or {}
    status = {True: "all criteria passed", None: "not verified (no criteria)"}.get(
        values.get("success"), "best attempt"
    )
    progress.say(f"{status}: round {final.get('round')} ({final.get('passed')}/{final.get('total')}) -> {final_png}")
    print(final_png)
    return 0
