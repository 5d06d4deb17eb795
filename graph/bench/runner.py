"""Run a prompt set with one method: concurrent, resumable, scored, with a progress line.

Each finished prompt is written at once to `DIR/results/<id>.json`; a re-run skips those. Runs in flight have
checkpoint threads `<method>-<id>` in `DIR/checkpoints.sqlite`, so a killed bench loses at most the steps in
flight. Several prompts run at once, so the generator keeps working while other prompts wait on MLLM calls.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from gems.configs import GemsSettings
from gems.graph.bench.datasets import BenchPrompt, load_prompts
from gems.graph.bench.methods import method_settings, run_method
from gems.graph.bench.report import build_summary, write_reports
from gems.graph.bench.scoring import judge_warning, make_scorer


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False)
    os.replace(tmp, path)  # a result file is whole or absent, never half-written


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class Progress:
    """`[12/40] 30% 1m02s elapsed, ETA 2m24s` on stderr, rewritten in place on a terminal."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.failed = total, 0, 0
        self.started = time.monotonic()
        self.enabled = enabled
        self.lock = threading.Lock()
        self.tty = sys.stderr.isatty()

    def tick(self, ok: bool, note: str = "") -> None:
        with self.lock:
            self.done += 1
            self.failed += 0 if ok else 1
            if not self.enabled:
                return
            elapsed = time.monotonic() - self.started
            eta = elapsed / self.done * (self.total - self.done)
            line = (
                f"[{self.done}/{self.total}] {100 * self.done // max(self.total, 1)}% {_duration(elapsed)} elapsed, "
                f"ETA {_duration(eta)}{f', {self.failed} failed' if self.failed else ''} {note}"
            )
            print(("\r" + line + "\033[K") if self.tty else line, file=sys.stderr, end="" if self.tty else "\n")

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


def run_bench(
    prompts: str | Path,
    settings: GemsSettings,
    method: str,
    out: str | Path,
    *,
    concurrency: int = 4,
    limit: int | None = None,
    scorer: str = "auto",
    search_n: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or continue) a benchmark and write `summary.json`, `report.md` and `report.html` into `out`.

    Returns:
        The summary dict.
    """
    from gems.graph.builder import build_graph
    from gems.memory.checkpoint import open_checkpointer

    out = Path(out)
    dataset, items = load_prompts(prompts)
    items = items[:limit] if limit else items
    run_settings = method_settings(method, settings, search_n)
    judge = make_scorer(scorer, settings, dataset)
    warning = judge_warning(settings) if judge is not None and judge.name == "soft-tifa" else None
    if warning:
        print(warning, file=sys.stderr)
    results_dir = out / "results"
    finished = {p.stem for p in results_dir.glob("*.json")} if results_dir.is_dir() else set()
    todo = [item for item in items if item.id not in finished]
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "run.json", {"prompts": str(prompts), "dataset": dataset, "method": method, "limit": limit,
                                   "scorer": judge.name if judge else None, "search_n": search_n})  # fmt: skip

    bench_storage = run_settings.storage.model_copy(
        update={"checkpointer": "sqlite", "sqlite_path": out / "checkpoints.sqlite"}
    )
    run_settings = run_settings.model_copy(update={"storage": bench_storage})
    meter = Progress(len(todo), enabled=progress)
    if finished and progress:
        print(
            f"{len(items) - len(todo)} of {len(items)} prompts already done in {out}; running the rest", file=sys.stderr
        )
    started = time.perf_counter()
    errors: list[str] = []

    def one(item: BenchPrompt, graph: Any) -> None:
        record = run_method(method, item, run_settings, graph)
        image = (record.get("final") or {}).get("image") or {}
        if judge is not None and image.get("sha256"):
            record["score"] = judge.score(item, record, Path(image["path"]))
            record["scorer"] = judge.name
        _write_json(results_dir / f"{item.id}.json", record)

    with open_checkpointer(run_settings) as saver:
        graph = build_graph(checkpointer=saver)
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures = {pool.submit(one, item, graph): item for item in todo}
            for future in as_completed(futures):
                item = futures[future]
                exc = future.exception()
                if exc is not None:
                    errors.append(f"{item.id}: {' '.join(str(exc).split())[:200]}")
                meter.tick(exc is None, f"({item.id})")
    meter.close()

    records = []
    for item in items:
        path = results_dir / f"{item.id}.json"
        if path.exists():
            records.append(json.loads(path.read_text(encoding="utf-8")))
    summary = build_summary(records, dataset=dataset, method=method, total=len(items), errors=errors,
                            wall_s=time.perf_counter() - started, max_rounds=run_settings.loop.max_rounds)  # fmt: skip
    write_reports(out, summary, records)
    return summary
