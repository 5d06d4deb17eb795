"""Cross-run lessons: one per finished run, kept in a LangGraph `BaseStore` and retrieved by prompt similarity.

`Lesson` is what a run taught; `lesson_from_state` derives it from the trajectory; `ExperienceStore` reads and
writes lessons through any `BaseStore` (see `gems.memory.store.ChromaStore` for the default one).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from langgraph.store.base import BaseStore, GetOp, PutOp

from gems.configs import GemsSettings
from gems.memory.store import StoreError, one_line, open_store

LESSON_NAMESPACE = uuid.UUID("5b0c7a52-1e7e-4c1a-9d8e-6a1f0c3e2b11")
LESSONS = ("gems", "lessons")  # the store namespace of lessons (a tenant's: ("gems", "tenants", NAME, "lessons"))
MAX_LESSONS = 100_000  # listing bound for stores that page

__all__ = ["LESSONS", "ExperienceStore", "Lesson", "StoreError", "lesson_from_state"]


@dataclass
class Lesson:
    """What one run taught: what was asked, what was hard, what wording fixed it, and how it ended."""

    prompt: str
    text: str
    outcome: str  # "success" or "best-effort"
    rounds: int
    passed: int
    total: int
    hard_criteria: list[str] = field(default_factory=list)
    fixed_by: str | None = None
    generator_model: str = ""
    generator_backend: str = ""
    skill: str | None = None
    thread_id: str = ""
    created_at: float = field(default_factory=time.time)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            # One id per thread: a resumed or repeated write replaces the lesson instead of adding a second one.
            self.id = str(uuid.uuid5(LESSON_NAMESPACE, self.thread_id or f"{self.prompt}#{self.created_at}"))

    def brief(self) -> str:
        """The lesson as one compact paragraph for a prompt."""
        return f"{self.text} (outcome: {self.outcome}, {self.passed}/{self.total} after {self.rounds} rounds)"


def lesson_from_state(state: dict[str, Any], settings: GemsSettings, thread_id: str) -> Lesson | None:
    """Derive the run's lesson from its trajectory; None when there was nothing to learn (no criteria)."""
    criteria = state.get("criteria") or []
    rounds = state.get("rounds") or []
    if not criteria or not rounds:
        return None
    final = state.get("final") or {}
    hard = [q for q in criteria if any(q in (r.get("failed") or []) for r in rounds)]
    fixed_by = None
    fixed_by_edit = False
    if hard:
        # The first round after a failure in which the most hard criteria passed: its prompt is the fix.
        fixing = [r for r in rounds[1:] if any(q in (r.get("passed") or []) for q in hard)]
        if fixing:
            best = max(fixing, key=lambda r: sum(q in (r.get("passed") or []) for q in hard))
            fixed_by = best.get("prompt")
            fixed_by_edit = best.get("mode") == "edit"
    experiences = [r["experience"] for r in rounds if r.get("experience")]
    success = bool(state.get("success"))
    parts = [f'Request: "{state["prompt"]}".']
    if not hard:
        parts.append(f'Every criterion passed at once with the prompt "{rounds[0].get("prompt")}".')
    else:
        parts.append("Hard to satisfy: " + "; ".join(hard) + ".")
        if fixed_by and fixed_by_edit:
            parts.append(f'An edit of the image fixed it, instructed: "{fixed_by}".')
        elif fixed_by:
            parts.append(f'Wording that fixed it: "{fixed_by}".')
        if experiences:
            parts.append(f"Last insight: {experiences[-1]}")
    generator = settings.generator
    return Lesson(
        prompt=state["prompt"],
        text=" ".join(parts),
        outcome="success" if success else "best-effort",
        rounds=len(rounds),
        passed=int(final.get("passed") or 0),
        total=len(criteria),
        hard_criteria=hard,
        fixed_by=fixed_by,
        generator_model=generator.model_label,
        generator_backend=generator.backend,
        skill=state.get("skill"),
        thread_id=thread_id,
    )


class ExperienceStore:
    """Lessons in any LangGraph `BaseStore`, under the namespace `("gems", "lessons")`.

    The store is the graph's (`runtime.store`: the Agent Server's own, or the `ChromaStore` that `gems generate`,
    `gems serve` and `gems bench` pass), or, when none is given, the `ChromaStore` the settings describe. Search
    needs the store's semantic index over the lesson's `prompt` (scores are cosine similarity).
    """

    def __init__(self, settings: GemsSettings, store: BaseStore | None = None):
        self.store = store if store is not None else open_store(settings)
        tenant = settings.memory.tenant
        # Outside ("gems", "lessons"), so a search there (a prefix match) never reaches a tenant's lessons.
        self.namespace = ("gems", "tenants", tenant, "lessons") if tenant else LESSONS

    @property
    def where(self) -> str:
        return getattr(self.store, "where", type(self.store).__name__)

    def add(self, lesson: Lesson) -> str:
        """Write (or replace) one lesson in a single put, so a killed run leaves no partial record."""
        self.add_many([lesson])
        return lesson.id

    def add_many(self, lessons: list[Lesson]) -> int:
        """Write (or replace) lessons in one batch."""
        if lessons:
            self.store.batch([PutOp(self.namespace, item.id, asdict(item), ["prompt"]) for item in lessons])
        return len(lessons)

    def search(
        self, query: str, k: int = 3, min_relevance: float = 0.0, where: dict[str, Any] | None = None
    ) -> list[tuple[Lesson, float]]:
        """The `k` lessons whose prompts are most similar to `query`, with cosine relevance in [0, 1]."""
        items = self.store.search(self.namespace, query=query, filter=where, limit=k)
        hits = [(_lesson(item.value), round(item.score or 0.0, 4)) for item in items]
        return [(lesson, score) for lesson, score in hits if score >= min_relevance]

    def get(self, lesson_id: str) -> Lesson | None:
        item = self.store.get(self.namespace, lesson_id)
        return _lesson(item.value) if item is not None else None

    def list(self, limit: int | None = None) -> list[Lesson]:
        """Every lesson, newest first."""
        lessons = [_lesson(item.value) for item in self.store.search(self.namespace, limit=MAX_LESSONS)]
        lessons.sort(key=lambda item: item.created_at, reverse=True)
        return lessons[:limit] if limit else lessons

    def count(self) -> int:
        return len(self.store.search(self.namespace, limit=MAX_LESSONS))

    def delete(self, lesson_ids: Sequence[str]) -> int:
        found = self.store.batch(
            [GetOp(self.namespace, i) for i in lesson_ids]
        )  # one batch: one store open, not one per id
        present = [i for i, item in zip(lesson_ids, found, strict=True) if item is not None]
        if present:
            self.store.batch([PutOp(self.namespace, i, None) for i in present])
        return len(present)

    def clear(self) -> int:
        return self.delete([item.key for item in self.store.search(self.namespace, limit=MAX_LESSONS)])

    def export(self, path: Path) -> int:
        """Write every lesson as one JSON object per line."""
        lessons = self.list()
        with open(path, "w", encoding="utf-8") as fh:
            for item in lessons:
                fh.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
        return len(lessons)

    def import_(self, path: Path) -> int:
        """Read lessons written by `export` (same ids replace, others are added)."""
        lessons = []
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    lessons.append(Lesson(**json.loads(line)))
                except (json.JSONDecodeError, TypeError) as exc:
                    raise StoreError(f"{path} line {number} is not a lesson: {one_line(exc)}") from exc
        return self.add_many(lessons)


def _lesson(value: dict[str, Any]) -> Lesson:
    known = set(Lesson.__dataclass_fields__)
    return Lesson(**{k: v for k, v in value.items() if k in known})
