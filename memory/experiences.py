"""The cross-run experience store: one lesson per finished run in a Chroma collection, retrieved by prompt.

Embedded (`chromadb.PersistentClient` under the data dir) by default; a Chroma server (`chromadb.HttpClient`) when
`memory.chroma.host` is set. In embedded mode every operation takes a file lock and opens a fresh client, so
several threads and processes can share one folder without losing or overwriting each other's lessons.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gems.configs import GemsSettings

LESSON_NAMESPACE = uuid.UUID("5b0c7a52-1e7e-4c1a-9d8e-6a1f0c3e2b11")
_thread_lock = threading.Lock()


class StoreError(RuntimeError):
    """The experience store cannot be used; the message says what to do."""


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

    def metadata(self) -> dict[str, Any]:
        """Chroma metadata: scalars only (lists as JSON, None as empty string)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key == "id":
                continue
            if isinstance(value, list):
                value = json.dumps(value, ensure_ascii=False)
            out[key] = "" if value is None else value
        return out

    @classmethod
    def from_metadata(cls, lesson_id: str, meta: dict[str, Any]) -> Lesson:
        data = dict(meta)
        data["hard_criteria"] = json.loads(data.get("hard_criteria") or "[]")
        for key in ("fixed_by", "skill"):
            data[key] = data.get(key) or None
        known = {f for f in cls.__dataclass_fields__}
        return cls(id=lesson_id, **{k: v for k, v in data.items() if k in known and k != "id"})

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
    if hard:
        # The first round after a failure in which the most hard criteria passed: its prompt is the fix.
        fixing = [r for r in rounds[1:] if any(q in (r.get("passed") or []) for q in hard)]
        if fixing:
            best = max(fixing, key=lambda r: sum(q in (r.get("passed") or []) for q in hard))
            fixed_by = best.get("prompt")
    experiences = [r["experience"] for r in rounds if r.get("experience")]
    success = bool(state.get("success"))
    parts = [f'Request: "{state["prompt"]}".']
    if not hard:
        parts.append(f'Every criterion passed at once with the prompt "{rounds[0].get("prompt")}".')
    else:
        parts.append("Hard to satisfy: " + "; ".join(hard) + ".")
        if fixed_by:
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
    """Lessons in a Chroma collection; the embeddings come from `gems.memory.embeddings`, never from Chroma."""

    def __init__(self, settings: GemsSettings):
        self.settings = settings
        self.chroma = settings.memory.chroma
        self.path = settings.chroma_path
        self._embeddings = None

    @property
    def where(self) -> str:
        if self.chroma.host:
            return f"Chroma server {self.chroma.host}:{self.chroma.port}"
        return str(self.path)

    def _embed(self, texts: list[str]) -> list[list[float]]:
        if self._embeddings is None:
            from gems.memory.embeddings import get_embeddings

            self._embeddings = get_embeddings(self.settings.embeddings)
        return self._embeddings.embed_documents(texts)

    @contextlib.contextmanager
    def _collection(self) -> Iterator[Any]:
        import chromadb
        from chromadb.config import Settings as ChromaClientSettings

        client_settings = ChromaClientSettings(anonymized_telemetry=False, allow_reset=False)
        if self.chroma.host:
            try:
                client = chromadb.HttpClient(
                    host=self.chroma.host,
                    port=self.chroma.port,
                    ssl=self.chroma.ssl,
                    headers=self.chroma.headers or None,
                    settings=client_settings,
                )
                yield self._open_collection(client)
            except StoreError:
                raise
            except Exception as exc:
                raise StoreError(f"cannot use the {self.where}: {_one_line(exc)}") from exc
            return

        self.path.mkdir(parents=True, exist_ok=True)
        with _thread_lock, open(self.path / ".gems.lock", "a+") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            client = None
            try:
                try:
                    client = chromadb.PersistentClient(path=str(self.path), settings=client_settings)
                    collection = self._open_collection(client)
                except StoreError:
                    raise
                except Exception as exc:
                    raise StoreError(
                        f"the experience store at {self.path} is unreadable ({_one_line(exc)}); "
                        "move the folder away and gems will start a new one"
                    ) from exc
                yield collection
            finally:
                if client is not None:
                    # A fresh client per operation: another process may have written since the last one.
                    with contextlib.suppress(Exception):
                        client.close()
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _open_collection(self, client: Any) -> Any:
        return client.get_or_create_collection(
            self.chroma.collection, embedding_function=None, metadata={"hnsw:space": "cosine"}
        )

    def add(self, lesson: Lesson) -> str:
        """Write (or replace) one lesson in a single upsert, so a killed run leaves no partial record."""
        self.add_many([lesson])
        return lesson.id

    def add_many(self, lessons: list[Lesson]) -> int:
        """Write (or replace) lessons in one upsert."""
        if not lessons:
            return 0
        vectors = self._embed([item.prompt for item in lessons])
        with self._collection() as col:
            col.upsert(
                ids=[item.id for item in lessons],
                embeddings=vectors,
                documents=[item.prompt for item in lessons],
                metadatas=[item.metadata() for item in lessons],
            )
        return len(lessons)

    def search(
        self, query: str, k: int = 3, min_relevance: float = 0.0, where: dict[str, Any] | None = None
    ) -> list[tuple[Lesson, float]]:
        """The `k` lessons whose prompts are most similar to `query`, with cosine relevance in [0, 1]."""
        vector = self._embed([query])
        with self._collection() as col:
            if col.count() == 0:
                return []
            result = col.query(
                query_embeddings=vector, n_results=k, where=where or None, include=["metadatas", "distances"]
            )
        hits = []
        for lesson_id, meta, distance in zip(
            result["ids"][0], result["metadatas"][0], result["distances"][0], strict=True
        ):
            relevance = max(0.0, 1.0 - float(distance))
            if relevance >= min_relevance:
                hits.append((Lesson.from_metadata(lesson_id, meta), round(relevance, 4)))
        return hits

    def get(self, lesson_id: str) -> Lesson | None:
        with self._collection() as col:
            result = col.get(ids=[lesson_id], include=["metadatas"])
        if not result["ids"]:
            return None
        return Lesson.from_metadata(result["ids"][0], result["metadatas"][0])

    def list(self, limit: int | None = None) -> list[Lesson]:
        """Every lesson, newest first."""
        with self._collection() as col:
            result = col.get(include=["metadatas"])
        lessons = [Lesson.from_metadata(i, m) for i, m in zip(result["ids"], result["metadatas"], strict=True)]
        lessons.sort(key=lambda item: item.created_at, reverse=True)
        return lessons[:limit] if limit else lessons

    def count(self) -> int:
        with self._collection() as col:
            return col.count()

    def delete(self, lesson_ids: list[str]) -> int:
        with self._collection() as col:
            present = col.get(ids=lesson_ids, include=[])["ids"]
            if present:
                col.delete(ids=present)
        return len(present)

    def clear(self) -> int:
        with self._collection() as col:
            ids = col.get(include=[])["ids"]
            if ids:
                col.delete(ids=ids)
        return len(ids)

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
                    raise StoreError(f"{path} line {number} is not a lesson: {_one_line(exc)}") from exc
        return self.add_many(lessons)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
