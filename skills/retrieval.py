"""Skill retrieval: embed each skill's description and trigger examples once, then rank skills for a prompt.

The router only ever sees the top-k candidates, so its prompt stays the same size with 8 or 1,000 skills.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings
from langgraph.store.base import IndexConfig, PutOp
from langgraph.store.memory import InMemoryStore

from gems.skills.registry import Skill, SkillRegistry


def routing_texts(skill: Skill) -> list[str]:
    """What a skill is matched on: its name and description, plus any `metadata.examples` prompts."""
    examples = skill.metadata.get("examples") or []
    return [f"{skill.name.replace('-', ' ')}: {skill.description}", *[str(e) for e in examples]]


class SkillIndex:
    """Every routing text of a registry in a LangGraph `InMemoryStore` with a semantic index (cosine similarity).

    With `cache_dir`, the routing texts' vectors are kept on disk under a key of the embedding model and every
    routing text, so a process embeds the library only when it or the model changed (~1 s for 9 skills on a CPU).
    """

    def __init__(self, registry: SkillRegistry, embeddings: Embeddings, cache_dir: Path | None = None):
        self.registry = registry
        texts = [text for skill in registry.skills.values() for text in routing_texts(skill)]
        self.size = len(texts)
        known = dict(zip(texts, _cached_vectors(texts, embeddings, cache_dir), strict=True)) if texts else {}

        def embed(batch: Sequence[str]) -> list[list[float]]:
            missing = [t for t in batch if t not in known]
            known.update(zip(missing, embeddings.embed_documents(missing), strict=True) if missing else ())
            return [known[t] for t in batch]

        dims = len(next(iter(known.values()))) if known else 1
        self.store = InMemoryStore(index=IndexConfig(dims=dims, embed=embed, fields=["text"]))
        self.store.batch(
            [
                PutOp(("skills",), f"{skill.name}#{n}", {"skill": skill.name, "text": text})
                for skill in registry.skills.values()
                for n, text in enumerate(routing_texts(skill))
            ]
        )

    def search(self, prompt: str, k: int = 5, min_relevance: float = 0.0) -> list[tuple[Skill, float]]:
        """The `k` best skills for `prompt` by cosine similarity (each skill scored by its best-matching text)."""
        if not self.size:
            return []
        best: dict[str, float] = {}
        for item in self.store.search(("skills",), query=prompt, limit=self.size):
            name, score = item.value["skill"], float(item.score or 0.0)
            best[name] = max(score, best.get(name, -1.0))
        ranked = sorted(best.items(), key=lambda pair: pair[1], reverse=True)
        return [(self.registry.skills[name], round(score, 4)) for name, score in ranked[:k] if score >= min_relevance]


def _cached_vectors(texts: list[str], embeddings: Embeddings, cache_dir: Path | None) -> list[list[float]]:
    """The texts' vectors, from `cache_dir` when this model embedded exactly these texts before."""
    if cache_dir is None:
        return embeddings.embed_documents(texts)
    model = getattr(embeddings, "name", type(embeddings).__name__)
    key = hashlib.sha256(json.dumps([model, texts]).encode()).hexdigest()[:20]
    path = cache_dir / f"skill-index-{key}.json"
    with contextlib.suppress(OSError, ValueError):
        vectors = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(vectors, list) and len(vectors) == len(texts):
            return vectors
    vectors = embeddings.embed_documents(texts)
    with contextlib.suppress(OSError):  # a read-only data dir only loses the cache
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(vectors, fh)
        os.replace(tmp, path)
    return vectors


_indexes: dict[tuple[Any, int], SkillIndex] = {}
_lock = threading.Lock()


def get_index(registry: SkillRegistry, embeddings: Embeddings, cache_dir: Path | None = None) -> SkillIndex:
    """Return the process-wide index for this registry and embedding model (built once, vectors cached on disk)."""
    # By content, not id(): a registry rebuilt after an edit may reuse a collected one's id.
    routing = tuple((s.name, s.description, str(s.path), repr(s.metadata)) for s in registry.skills.values())
    key = (routing, id(embeddings))
    with _lock:
        index = _indexes.get(key)
        if index is None:
            index = SkillIndex(registry, embeddings, cache_dir)
            if len(_indexes) >= 64:  # libraries come and go (edits, gems skills evolve): keep the newest
                del _indexes[next(iter(_indexes))]
            _indexes[key] = index
        return index
