"""Trajectory memory: the per-round facts and experiences in state, turned into model context or a report.

The round records live in graph state (so checkpoints, `get_state_history` and resume carry them); this module
only reads them. `refiner_context` is the one place that decides what the refiner sees for each memory mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gems.configs import GemsSettings
from gems.memory.artifacts import ArtifactStore

# Which layers of memory each mode gives the refiner (the paper's ablation rows).
MODE_LAYERS: dict[str, dict[str, bool]] = {
    "last": {"history": False, "images": True, "thought": False, "experience": False},
    "feedback": {"history": True, "images": False, "thought": False, "experience": False},
    "images": {"history": True, "images": True, "thought": False, "experience": False},
    "thought": {"history": True, "images": True, "thought": True, "experience": False},
    "experience": {"history": True, "images": True, "thought": False, "experience": True},
}


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {q}" for q in items) if items else "- (none)"


def refiner_context(state: Mapping[str, Any], settings: GemsSettings, store: ArtifactStore) -> list[dict[str, Any]]:
    """Build the refiner's user message parts (text and image blocks) from the trajectory in `state`.

    Args:
        state: graph state with `prompt` and `rounds`.
        settings: `memory.mode` picks the layers; `memory.image_window` bounds how many latest rounds send images.
        store: where round images are read from.

    Returns:
        OpenAI chat content parts, oldest round first.
    """
    layers = MODE_LAYERS[settings.memory.mode]
    rounds = list(state.get("rounds") or [])
    if not layers["history"]:
        rounds = rounds[-1:]
    window = settings.memory.image_window
    with_image = {r["round"] for r in (rounds[-window:] if window is not None and window > 0 else rounds)}
    if window == 0:
        with_image = set()

    parts: list[dict[str, Any]] = [
        {"type": "text", "text": f"Original request (the intent every prompt must serve):\n{state['prompt']}"}
    ]
    lessons = state.get("lessons") or []
    if lessons and settings.memory.lessons_to_refiner:
        items = "\n".join(f"- {item['brief']}" for item in lessons)
        parts.append({"type": "text", "text": f"\nLessons from similar earlier requests:\n{items}"})
    for record in rounds:
        lines = [f"\n## Attempt {record['round']}"]
        if layers["experience"] and record.get("experience"):
            lines.append(f"Lesson from this attempt: {record['experience']}")
        if layers["thought"] and record.get("thought"):
            lines.append(f"Reasoning behind this prompt: {record['thought']}")
        lines.append(f"Prompt used:\n{record.get('prompt', '')}")
        parts.append({"type": "text", "text": "\n".join(lines)})
        if layers["images"] and record["round"] in with_image and record.get("image", {}).get("sha256"):
            parts.append({"type": "text", "text": "Image it produced:"})
            parts.append(
                {
                    "type": "image_url",
                    "image_url": {"url": store.data_url(record["image"], settings.mllm.image_max_side)},
                }
            )
        parts.append({"type": "text", "text": f"Requirements it failed:\n{_bullets(record.get('failed') or [])}"})
    parts.append({"type": "text", "text": "\nWrite the next prompt."})
    return parts


def compressor_context(state: Mapping[str, Any], settings: GemsSettings, store: ArtifactStore) -> list[dict[str, Any]]:
    """Build the compressor's input for the latest round: its facts, its thought, its image, earlier lessons."""
    rounds = list(state.get("rounds") or [])
    latest = rounds[-1]
    earlier = [f"Attempt {r['round']}: {r['experience']}" for r in rounds[:-1] if r.get("experience")]
    text = (
        f"Earlier lessons:\n{chr(10).join(earlier) if earlier else '(none yet)'}\n\n"
        f"Attempt {latest['round']} prompt:\n{latest.get('prompt', '')}\n\n"
        f"Reasoning behind this prompt:\n{latest.get('thought') or '(not available)'}\n\n"
        f"Requirements met:\n{_bullets(latest.get('passed') or [])}\n\n"
        f"Requirements failed:\n{_bullets(latest.get('failed') or [])}\n\n"
        "The image from this attempt:"
    )
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if latest.get("image", {}).get("sha256"):
        parts.append(
            {
                "type": "image_url",
                "image_url": {"url": store.data_url(latest["image"], settings.mllm.image_max_side)},
            }
        )
    return parts


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
    state: dict[str, Any], *, thread_id: str | None = None, settings: GemsSettings | None = None
) -> dict[str, Any]:
    """A run's public result, the one shape the CLI (`trajectory.json`), the server, the bench and the tool return.

    JSON-ready: prompt, criteria, skill, every round (prompt, image, passed/failed, experience, thought, verdicts),
    the final image, lessons used, warnings, counts, token usage and timings; `settings` adds the models and the
    loop and memory options that produced it.
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
    if settings is not None:
        report["settings"] = {
            "mllm": {"base_url": settings.mllm.base_url, "model": settings.mllm.model},
            "generator": {
                "backend": settings.generator.backend,
                "preset": settings.generator.preset,
                "model": settings.generator.model,
            },
            "loop": settings.loop.model_dump(),
            "memory": settings.memory.model_dump(),
        }
    return report
