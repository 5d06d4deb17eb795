"""Run a prompt set with one method: concurrent, resumable, scored, with a progress line.

A run folder belongs to one run: one selection of one prompt file. `run.json` records what produced it (the prompt
file and the sha256 of its bytes, the selection and shard, method, scorer, the resolved config with secrets masked
and its digest, models, base seed, gems version, git commit, times); continuing into a folder made with any of
them changed is refused. Without `--seed` the base seed is derived from that identity, so the shards of one run
(and a rerun) agree on it. Each finished prompt is written at once to
`DIR/results/<id>.json`, and only when its final image (and score, when a scorer runs) exist; a re-run skips
those. Runs in flight have checkpoint threads `<method>-<id>` in `DIR/checkpoints.sqlite`, so a killed bench
continues each unfinished prompt from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gems.configs import ConfigError, GemsSettings
from gems.configs.errors import short, without_passwords
from gems.configs.loading import OUTPUT_IGNORES, settings_digest, strip_keys
from gems.graph.builder import build_graph
from gems.interfaces.benchmarks.datasets import BenchPrompt, load_prompts
from gems.interfaces.benchmarks.methods import arun_method, method_settings
from gems.interfaces.benchmarks.report import build_summary, write_reports
from gems.interfaces.benchmarks.scoring import Scorer, judge_warning, make_scorer, resolve_scorer
from gems.interfaces.benchmarks.selection import Selection, prompts_digest
from gems.memory.aio import run_main
from gems.memory.checkpoint import open_checkpointer
from gems.memory.store import open_store

# Only what cannot change the images may differ between a bench run and its continuation (endpoints too are part
# of a bench run's identity, unlike a resumed generate run's).
BENCH_IGNORES = OUTPUT_IGNORES
_RUN_ARTIFACTS = ("results", "checkpoints.sqlite", "checkpoints.sqlite-wal", "checkpoints.sqlite-shm", "lessons",
                  "images", "summary.json", "report.md", "report.html", "run.json")  # fmt: skip
SAMPLE_SEED_STRIDE = 1000  # sample k of a prompt starts at base seed + k * 1000, clear of its rounds' seeds
HEARTBEAT_S = 2.0  # a killed session's recorded time falls short of its real time by at most this


class BenchMismatch(ConfigError):
    """The run folder holds results of a different run (prompt file, selection, method, scorer or config)."""


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False)
    os.replace(tmp, path)  # a result file is whole or absent, never half-written


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---- what a run is: identity, provenance ----


def config_digest(settings: GemsSettings) -> str:
    """sha256 of the settings that decide what a run produces (endpoints, models, loop, memory, skills, judge)."""
    return settings_digest(settings, BENCH_IGNORES)


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gems-agent")
    except PackageNotFoundError:
        return None


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two runs' configs, e.g. `generator.steps, loop.seed` (a derived seed follows the rest)."""
    keys = differences(
        strip_keys(old.get("config") or {}, BENCH_IGNORES), strip_keys(new.get("config") or {}, BENCH_IGNORES)
    )
    if old.get("seed_derived") and new.get("seed_derived"):
        keys = [key for key in keys if key != "loop.seed"]
    return ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "") if keys else "the config"


def prompt_file_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """How two runs' prompt files differ, in words: the same path edited since, or another file."""
    then, now = (str(run.get("prompts_sha256") or "not recorded")[:12] for run in (old, new))
    if old.get("prompts") == new.get("prompts"):
        return f"{new.get('prompts')}, changed since (sha256 {then} then, {now} now)"
    return f"another prompt file ({old.get('prompts')}, sha256 {then}; not {new.get('prompts')}, sha256 {now})"


def derived_seed(identity: dict[str, Any]) -> int:
    """A base seed from what the run is, so every shard of one run, and its rerun, draw the same one."""
    return int(hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8], 16) % 2**31


def _check_same_run(out: Path, previous: dict[str, Any], current: dict[str, Any], selection: Selection) -> None:
    """Refuse to mix runs in one folder; the message names what differs and the two ways out."""
    fix = "use --force-new to start this folder over, or a new --out"
    if previous.get("prompts_sha256") != current["prompts_sha256"]:
        raise BenchMismatch(f"{out} holds a run of {prompt_file_change(previous, current)}; {fix}")
    before = Selection.recorded(previous)
    if (before.spec(), before.shard) != (selection.spec(), selection.shard):
        raise BenchMismatch(f"{out} holds a run of {before.flags()}, not {selection.flags()}; {fix}")
    for key in ("dataset", "method", "scorer", "images_per_prompt", "search_n"):
        if key == "search_n" and current["method"] != "search":
            continue
        if previous.get(key) != current[key]:
            raise BenchMismatch(f"{out} holds a run with {key}={previous.get(key)}, not {current[key]}; {fix}")
    if previous.get("config_digest") != current["config_digest"]:
        what = config_differences(previous, current)
        raise BenchMismatch(f"{out} holds a run made with another config ({what} differ); {fix}")


def _clear(out: Path) -> None:
    for name in _RUN_ARTIFACTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def result_name(item_id: str, sample: int) -> str:
    return item_id if sample == 0 else f"{item_id}-s{sample}"


# ---- the run ----


class _Clock:
    """This session's elapsed time, kept in run.json's `sessions` as it runs, so a killed session still counts.

    `wall_s` is the sum over every session of the folder, each from the start of `run_bench` to its last record:
    its end, its latest finished prompt, or its latest heartbeat.
    """

    def __init__(self, out: Path, run_info: dict[str, Any], started: float):
        self.out, self.run_info, self.started = out, run_info, started
        self.session: dict[str, Any] = {"started_at": _now(), "wall_s": 0.0, "finished_at": None}
        run_info["sessions"] = [*_sessions(run_info), self.session]

    def record(self, finished: bool = False) -> None:
        self.session["wall_s"] = round(time.perf_counter() - self.started, 3)
        if finished:
            self.session["finished_at"] = _now()
        self.run_info["wall_s"] = round(sum(s["wall_s"] for s in self.run_info["sessions"]), 3)
        _write_json(self.out / "run.json", self.run_info)

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            self.record()


def _sessions(run_info: dict[str, Any]) -> list[dict[str, Any]]:
    """The sessions a run.json records; a folder from before they were kept counts as one."""
    if "sessions" in run_info:
        return list(run_info["sessions"])
    if run_info.get("wall_s"):
        keys = ("started_at", "wall_s", "finished_at")
        return [{key: run_info.get(key) for key in keys}]
    return []


@dataclass
class _Bench:
    """One bench session: what it runs, with what, and where it writes."""

    out: Path
    method: str
    settings: GemsSettings  # the run's settings: the method's, with the recorded base seed
    lessons: bool
    work: list[tuple[BenchPrompt, int]]  # every (prompt, sample) of the run
    todo: list[tuple[BenchPrompt, int]]  # those without a result yet
    run_info: dict[str, Any]
    clock: _Clock
    judge: Scorer | None = None
    judge_deadline: float | None = None
    thread_prefix: str = ""

    @property
    def results(self) -> Path:
        return self.out / "results"


def run_bench(
    prompts: str | Path,
    settings: GemsSettings,
    method: str,
    out: str | Path,
    *,
    concurrency: int = 4,
    limit: int | None = None,
    first: int | None = None,
    sample_seed: int = 0,
    scorer: str = "auto",
    search_n: int = 5,
    images_per_prompt: int = 1,
    lessons: bool = False,
    force_new: bool = False,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Run (or continue) a benchmark and write `run.json`, `summary.json`, `report.md` and `report.html` into `out`.

    Args:
        prompts: a prompt file or folder (see `datasets.load_prompts`).
        settings: the resolved config.
        method: one of `methods.METHODS`.
        out: the run folder; re-run with the same arguments to continue an interrupted bench (the same prompt file
            and selection: a folder holds one run).
        concurrency: prompts in flight at once; runs share one event loop (async nodes, an async checkpointer),
            so hundreds cost no thread each.
        limit: a stratified sample of this many prompts (seeded by `sample_seed`).
        first: the first K prompts instead.
        scorer: auto, soft-tifa, verifier or none (see `scoring.resolve_scorer`).
        search_n: candidates for the search method.
        images_per_prompt: independent samples per prompt (seed + k * 1000), e.g. 4 for GenEval's layout.
        lessons: carry cross-run lessons between this bench's prompts (store inside `out`); off is the paper.
        force_new: clear a folder that holds another run instead of refusing.
        progress: print a progress line on stderr.
        shard: (K, N) runs every N-th prompt of the selection from the K-th; `gems bench merge` joins the folders.

    Returns:
        The summary dict.

    Raises:
        ConfigError: a selection or count that is not a positive number.
        BenchMismatch: `out` holds a run of another prompt file or selection, or with another method, scorer or
            config.
        ScorerError: the scorer cannot run (before the first prompt).
    """
    started = time.perf_counter()
    out = Path(out)
    selection = Selection(limit, first, sample_seed, shard)
    for flag, value in (("--images-per-prompt", images_per_prompt), ("--search-n", search_n)):
        if value < 1:
            raise ConfigError(f"{flag} must be 1 or more, not {value}")
    dataset, all_items = load_prompts(prompts)
    selected, selection_record = selection.choose(all_items)
    items = selection.shard_of(selected)
    scorer_name = resolve_scorer(scorer, settings, dataset, method, items)
    previous = _previous_run(out, force_new)
    identity = {
        "dataset": dataset,
        "prompts": str(Path(prompts).resolve()),  # where the file is, wherever export or merge run from later
        "prompts_sha256": prompts_digest(prompts),
        "method": method,
        "scorer": scorer_name,
        "images_per_prompt": images_per_prompt,
        "search_n": search_n if method == "search" else None,
    }
    run_settings = _identify(identity, bench_settings(settings, method, search_n, lessons, out), selection, lessons)
    if previous is not None:
        _check_same_run(out, previous, identity, selection)
    run_info = {
        **(previous or {}),
        **identity,
        "selection": selection_record,
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "base_seed": run_settings.loop.seed,
        "lessons": {"enabled": lessons, "store": str(out / "lessons") if lessons else None},
        "models": _models(run_settings, scorer_name),
        "gems_version": _version(),
        "git_commit": _git_commit(),
        "started_at": (previous or {}).get("started_at") or _now(),
        "resumed_at": [*(previous or {}).get("resumed_at", []), _now()] if previous else [],
        "finished_at": None,
    }
    work = [(item, k) for item in items for k in range(images_per_prompt)]
    clock = _Clock(out, run_info, started)
    bench = _Bench(out, method, run_settings, lessons, work, _unfinished(out, work), run_info, clock)
    _start_judge(bench, scorer_name, settings, items)
    bench.clock.record()
    errors = _run_all(bench, concurrency, progress)
    return _finish(bench, errors)


def _previous_run(out: Path, force_new: bool) -> dict[str, Any] | None:
    """The run.json of the run `out` holds, if any; `force_new` clears the folder instead."""
    if force_new and out.exists():
        _clear(out)
    return json.loads((out / "run.json").read_text(encoding="utf-8")) if (out / "run.json").is_file() else None


def _identify(
    identity: dict[str, Any], run_settings: GemsSettings, selection: Selection, lessons: bool
) -> GemsSettings:
    """Give the run its base seed (`--seed`, else derived from `identity`) and add the config to `identity`."""
    seed = run_settings.loop.seed
    if seed is None:  # not from the shard or the path: the shards of one run share it
        drawn = {**identity, "prompts": None, "selection": selection.spec(), "config": config_digest(run_settings)}
        seed = derived_seed(drawn)
    identity["seed_derived"] = run_settings.loop.seed is None
    run_settings = seeded(run_settings, seed, lessons)
    identity.update(
        config_digest=config_digest(run_settings),
        config=without_passwords(run_settings.model_dump(mode="json")),  # SecretStr fields dump masked
    )
    return run_settings


def bench_settings(settings: GemsSettings, method: str, search_n: int, lessons: bool, out: Path) -> GemsSettings:
    """The settings of a bench run: the method's, no lessons unless asked (then stored in `out`), its checkpointer."""
    run_settings = method_settings(method, settings, search_n)
    memory = run_settings.memory.model_copy(update={"lessons": lessons})
    if lessons and memory.chroma.host is None:  # the store lives in the run folder: nothing from other runs
        chroma = memory.chroma.model_copy(update={"path": out / "lessons"})
        memory = memory.model_copy(update={"chroma": chroma})
    storage = run_settings.storage
    if storage.checkpointer != "postgres":  # shards on several machines share a Postgres checkpointer instead
        storage = storage.model_copy(update={"checkpointer": "sqlite", "sqlite_path": out / "checkpoints.sqlite"})
    return run_settings.model_copy(update={"memory": memory, "storage": storage})


def seeded(run_settings: GemsSettings, seed: int, lessons: bool) -> GemsSettings:
    """The run's settings with its base seed (and, on a shared Chroma server, one collection per bench config)."""
    run_settings = run_settings.model_copy(update={"loop": run_settings.loop.model_copy(update={"seed": seed})})
    memory = run_settings.memory
    if lessons and memory.chroma.host is not None:
        chroma = memory.chroma.model_copy(
            update={"collection": f"{memory.chroma.collection}-{config_digest(run_settings)}"}
        )
        run_settings = run_settings.model_copy(update={"memory": memory.model_copy(update={"chroma": chroma})})
    return run_settings


def _models(settings: GemsSettings, scorer_name: str) -> dict[str, Any]:
    return {
        "mllm": settings.mllm.model,
        "generator": settings.generator.model_label,
        "generator_backend": settings.generator.backend,
        "judge": settings.judge.model if settings.judge and scorer_name == "soft-tifa" else None,
        "judge_backend": settings.judge.backend if settings.judge and scorer_name == "soft-tifa" else None,
    }


def _unfinished(out: Path, work: list[tuple[BenchPrompt, int]]) -> list[tuple[BenchPrompt, int]]:
    results = out / "results"
    done = {p.stem for p in results.glob("*.json")} if results.is_dir() else set()
    return [(item, k) for item, k in work if result_name(item.id, k) not in done]


def _start_judge(bench: _Bench, scorer_name: str, settings: GemsSettings, items: list[BenchPrompt]) -> None:
    """Build the scorer and check it answers (before the first prompt); bound the time one image's score takes."""
    bench.judge = make_scorer(scorer_name, bench.settings)
    if bench.judge is None:
        return
    bench.judge.check()
    warning = judge_warning(settings) if bench.judge.name == "soft-tifa" else None
    if warning:
        print(warning, file=sys.stderr)
    judge = bench.settings.judge
    if judge is not None and items:  # every atom, each try timeout_s, however slowly the judge answers
        atoms = max(1, max(len(item.atoms) for item in items))
        bench.judge_deadline = judge.timeout_s * (judge.max_retries + 1) * atoms


def _run_all(bench: _Bench, concurrency: int, progress: bool) -> list[str]:
    """Run every unfinished (prompt, sample) on one event loop; returns the failures, one line each."""
    meter = tqdm(total=len(bench.todo), desc="gems bench", unit="image", file=sys.stderr, disable=not progress)
    if len(bench.todo) < len(bench.work) and progress:
        done = len(bench.work) - len(bench.todo)
        print(f"{done} of {len(bench.work)} images already done in {bench.out}; running the rest", file=sys.stderr)
    # Postgres is shared by shards and other benches: thread ids carry the run's config digest.
    if bench.settings.storage.checkpointer == "postgres":
        bench.thread_prefix = f"{bench.run_info['config_digest']}-"
    try:
        return run_main(_run_tasks(bench, concurrency, meter))
    finally:
        meter.close()


async def _run_tasks(bench: _Bench, concurrency: int, meter: Any) -> list[str]:
    failures: list[str] = []
    async with open_checkpointer(bench.settings, asynchronous=True) as saver:
        graph = build_graph(checkpointer=saver, store=open_store(bench.settings) if bench.lessons else None)
        slots = asyncio.Semaphore(max(1, concurrency))
        tasks = [asyncio.ensure_future(_guarded(bench, item, k, graph, slots)) for item, k in bench.todo]
        tasks.append(asyncio.ensure_future(bench.clock.heartbeat()))
        try:
            for next_done in asyncio.as_completed(tasks[:-1]):
                failure = await next_done
                if failure:
                    failures.append(failure)
                    meter.set_postfix(failed=len(failures))
                meter.update()
        finally:  # Ctrl-C: stop the others; their checkpoints let a re-run continue them
            for task in tasks:
                task.cancel()
    return failures


async def _guarded(bench: _Bench, item: BenchPrompt, sample: int, graph: Any, slots: asyncio.Semaphore) -> str | None:
    try:
        await _run_one(bench, item, sample, graph, slots)
    except Exception as exc:  # one prompt's failure is reported, the others go on
        return f"{result_name(item.id, sample)}: {short(str(exc), 200)}"
    return None


async def _run_one(bench: _Bench, item: BenchPrompt, sample: int, graph: Any, slots: asyncio.Semaphore) -> None:
    """Run one sample of one prompt, score it, and write its result file (only when all of it exists)."""
    settings = bench.settings
    if sample:
        seed = int(bench.run_info["base_seed"]) + sample * SAMPLE_SEED_STRIDE
        settings = settings.model_copy(update={"loop": settings.loop.model_copy(update={"seed": seed})})
    name = result_name(item.id, sample)
    async with slots:
        record = await arun_method(
            bench.method, item, settings, graph, thread_id=f"{bench.thread_prefix}{bench.method}-{name}"
        )
    record.update(sample=sample, seed=settings.loop.seed)
    if "skills" in item.meta:  # GenEval2's per-atom skills and atom count, for the official analysis tables
        record.update(atom_skills=item.meta["skills"], atom_count=item.meta["atom_count"])
    image = (record.get("final") or {}).get("image") or {}
    if not image.get("path") or not Path(image["path"]).is_file():
        raise RuntimeError("the run finished without a final image")
    if bench.judge is not None:  # outside the slot: scoring never holds a generator back
        try:
            score = await asyncio.wait_for(
                asyncio.to_thread(bench.judge.score, item, record, Path(image["path"])), timeout=bench.judge_deadline
            )
        except TimeoutError:
            raise RuntimeError(f"the judge gave no complete score within {bench.judge_deadline:g}s") from None
        record["cost"].update(score.pop("cost", {}))
        record["score"], record["scorer"] = score, bench.judge.name
    _write_json(bench.results / f"{name}.json", record)
    bench.clock.record()


def _finish(bench: _Bench, errors: list[str]) -> dict[str, Any]:
    """Record the end of the session and write the reports from every result the folder holds."""
    records = []
    for item, k in bench.work:
        path = bench.results / f"{result_name(item.id, k)}.json"
        if path.exists():
            records.append(json.loads(path.read_text(encoding="utf-8")))
    bench.run_info["finished_at"] = _now()
    bench.clock.record(finished=True)
    prompts = len({item.id for item, _ in bench.work})
    summary = build_summary(records, run=bench.run_info, prompts=prompts, errors=errors)
    write_reports(bench.out, summary, records)
    return summary
