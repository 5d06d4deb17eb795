"""A per-thread journal of endpoint calls as they start, so a resumed run's counts include what a killed process did.

State counts a call only when its node finishes; a process killed mid-node leaves no trace there, and the resume
makes the call again. The journal (`<data_dir>/calls/<hash of thread>.jsonl`, one line per call, appended before
the call goes out) is what `run_result` reports as `counts.calls_made`. It lives beside the artifacts, on the
machine that ran the call.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def journal_path(data_dir: Path, thread_id: str) -> Path:
    return data_dir / "calls" / f"{hashlib.sha256(thread_id.encode()).hexdigest()[:32]}.jsonl"


def record_call(data_dir: Path, thread_id: str, kind: str, count: int = 1) -> None:
    """Append one call (`kind` mllm or generator, `count` images for a generator call) before it is made."""
    path = journal_path(data_dir, thread_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:  # one short line per write: appends do not interleave
        fh.write(json.dumps({"kind": kind, "n": count}) + "\n")


def calls_made(data_dir: Path, thread_id: str) -> dict[str, int] | None:
    """Calls started for this thread, redone ones included; None when this machine has no journal for it."""
    path = journal_path(data_dir, thread_id)
    if not path.is_file():
        return None
    totals = {"mllm_calls": 0, "generator_calls": 0}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut by a kill mid-write
            continue
        key = "generator_calls" if entry.get("kind") == "generator" else "mllm_calls"
        totals[key] += int(entry.get("n") or 1)
    return totals
