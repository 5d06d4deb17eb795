"""Compressor prompts: the latest round's facts, thought and image, distilled into a short experience."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gems.configs import GemsSettings
from gems.memory.artifacts import ArtifactStore
from gems.nodes.prompts import bullets

COMPRESS_SYSTEM = """You keep the working notes of an image-generation agent that retries a prompt until every item
of a checklist passes.
Distil the latest attempt into a short lesson for the next attempt: which parts of the prompt worked, which
requirements failed and the likely reason you can see in the image, and what to change next. Build on the earlier
lessons instead of repeating them.
Write at most {max_words} words of plain prose, with no heading and no preamble."""

COMPRESS_USER = """Earlier lessons:
{earlier}

Attempt {round} prompt:
{prompt}

Reasoning behind this prompt:
{thought}

Requirements met:
{passed}

Requirements failed:
{failed}

The image from this attempt:"""

EARLIER_LESSON = "Attempt {round}: {experience}"


def compressor_parts(state: Mapping[str, Any], settings: GemsSettings, store: ArtifactStore) -> list[dict[str, Any]]:
    """The compressor's input for the latest round: its facts, its thought, its image, earlier experiences."""
    rounds = list(state.get("rounds") or [])
    latest = rounds[-1]
    earlier = [
        EARLIER_LESSON.format(round=r["round"], experience=r["experience"]) for r in rounds[:-1] if r.get("experience")
    ]
    text = COMPRESS_USER.format(
        earlier="\n".join(earlier) if earlier else "(none yet)",
        round=latest["round"],
        prompt=latest.get("prompt", ""),
        thought=latest.get("thought") or "(not available)",
        passed=bullets(latest.get("passed") or []),
        failed=bullets(latest.get("failed") or []),
    )
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if latest.get("image", {}).get("sha256"):
        url = store.data_url(latest["image"], settings.mllm.image_max_side)
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts
