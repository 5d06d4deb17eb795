"""Trajectory memory: which layers each memory mode keeps, the best round, and a run's public result.

The round records live in graph state (so checkpoints, `get_state_history` and resume carry them); this module
only reads them. `MODE_LAYERS` decides what the refiner sees in each mode (`gems.nodes.prompts.refine`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gems.configs import GemsSettings
from gems.configs.errors import shown_url, without_passwords
from gems.memory.artifacts import ArtifactError, ArtifactStore
from gems.memory.journal import calls_made

# Which layers of memory each mode gives the refiner (the paper's ablation rows).
MODE_LAYERS: dict[str, dict[str, bool]] = {
    "last": {"history": False, "images": True, "thought": False, "experience": False},
    "feedback": {"history": True, "images": False, "thought": False, "experience": False},
    "images": {"history": True, "images": True, "thought": False, "experience": False},
    "thought": {"history": True, "images": True, "thought": True, "experience": False},
    "experience": {"history": True, "images": True, "thought": False, "experience": True},
}


# How each round was made and what it kept, fixed and broke versus its base (see nodes/critique.py).
LINEAGE_KEYS = ("mode", "reason", "instruction", "base_round", "base_image", "kept", "fixed", "broken")


def context_size(parts: list[dict[str, Any]]) -> dict[str, int]:
    """Characters of text and number of image parts in a message (what a memory mode costs)."""
    chars = sum(len(p.get("text", "")) for p in parts if p.get("type") == "text")
    images = sum(1 for p in parts if p.get("type") == "image_url")
    return {"text_chars": chars, "image_parts": images}


def best_round(rounds: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The round that passed the most criteria; the earliest wins a tie (strict comparison, as the paper)."""
    best: Mapping[str, Any] | None = None
    for record in rounds:
        if best is None or len(record.get("passed") or []) > len(best.get("passed") or []):
            best = record
    return best


def run_result(
    state: dict[str, Any],
    *,
    thread_id: str | None = None,
    settings: GemsSettings | None = None,
    artifacts_dir: Path | None = None,
) -> dict[str, Any]:
    """A run's public result, the one shape the CLI (`trajectory.json`), the server, the bench and the tool return.

    JSON-ready: prompt, criteria, skill, every round (prompt, image, passed/failed, experience, thought, verdicts),
    the final image, lessons used, warnings, counts, token usage and timings; `settings` adds the models and the
    loop and memory options that produced it. Images are named by digest; with `artifacts_dir` (or `settings`)
    each also gets its file's `path`, for local use (never in what a server sends).
    """
    rounds = [
        {
            "round": r["round"],
            "prompt": r.get("prompt"),
            "image": r.get("image"),
            "passed": r.get("passed", []),
            "failed": r.get("failed", []),
            "experience": r.get("experience"),
            "thought": r.get("thought"),
            "verdicts": [{k: v[k] for k in ("criterion", "passed", "answer", "error")} for v in r.get("verdicts", [])],
            **({"candidates": r["candidates"]} if r.get("candidates") else {}),
            **{k: r[k] for k in LINEAGE_KEYS if k in r},
        }
        for r in state.get("rounds") or []
    ]
    report: dict[str, Any] = {
        "thread_id": thread_id,
        "prompt": state.get("prompt"),
        "skill": state.get("skill"),
        "skill_trace": state.get("skill_trace"),
        "lessons": state.get("lessons", []),
        "lesson_id": state.get("lesson_id"),
        "warnings": state.get("warnings", []),
        "criteria": state.get("criteria", []),
        "success": state.get("success"),
        "final": state.get("final"),
        "rounds": rounds,
        "counts": {
            "mllm_calls": state.get("mllm_calls", 0),
            "generator_calls": state.get("generator_calls", 0),
            "rounds": len(rounds) or (1 if state.get("final") else 0),
        },
        "usage": state.get("usage", {}),
        "timings": state.get("timings", {}),
    }
    folder = artifacts_dir or (settings.artifacts_dir if settings is not None else None)
    if folder is not None:
        report = _with_paths(report, ArtifactStore(folder))
    if settings is not None and thread_id:
        made = calls_made(settings.data_dir, thread_id)
        if made is not None:  # every call this machine started for the thread, redone ones included
            report["counts"]["calls_made"] = made
    if settings is not None:
        report["settings"] = {
            "mllm": {"base_url": shown_url(settings.mllm.base_url), "model": settings.mllm.model},
            "generator": {
                "backend": settings.generator.backend,
                "preset": settings.generator.preset,
                "model": settings.generator.model,
            },
            "loop": settings.loop.model_dump(),
            "memory": without_passwords(settings.memory.model_dump(mode="json")),
        }
    return report


def _with_paths(value: Any, store: ArtifactStore) -> Any:
    """`value` with `path` beside every image reference's digest (the file in `store`)."""
    if isinstance(value, dict):
        out = {k: _with_paths(v, store) for k, v in value.items()}
        if isinstance(out.get("sha256"), str):
            with contextlib.suppress(ArtifactError):
                out["path"] = str(store.path_for(out["sha256"]))
        return out
    if isinstance(value, list):
        return [_with_paths(v, store) for v in value]
    return value
