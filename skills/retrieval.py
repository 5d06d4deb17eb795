"""Skill retrieval: embed each skill's description and trigger examples once, then rank skills for a prompt.

The router only ever sees the top-k candidates, so its prompt stays the same size with 8 or 1,000 skills.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from langchain_core.embeddings import Embeddings

from gems.skills.registry import Skill, SkillRegistry


def routing_texts(skill: Skill) -> list[str]:
    """What a skill is matched on: its name and description, plus any `metadata.examples` prompts."""
    examples = skill.metadata.get("examples") or []
    return [f"{skill.name.replace('-', ' ')}: {skill.description}", *[str(e) for e in examples]]


@dataclass
class SkillIndex:
    """Embeddings of every routing text, with the skill each belongs to."""

    registry: SkillRegistry
    embeddings: Embeddings

    def __post_init__(self) -> None:
        import numpy as np

        self._owners: list[str] = []
        texts: list[str] = []
        for skill in self.registry.skills.values():
            for text in routing_texts(skill):
                texts.append(text)
                self._owners.append(skill.name)
        vectors = self.embeddings.embed_documents(texts) if texts else []
        self._matrix = np.asarray(vectors, dtype="float32").reshape(len(texts), -1)
        norms = np.linalg.norm(self._matrix, axis=1, keepdims=True)
        self._matrix /= np.where(norms == 0, 1, norms)

    def search(self, prompt: str, k: int = 5, min_relevance: float = 0.0) -> list[tuple[Skill, float]]:
        """The `k` best skills for `prompt` by cosine similarity (each skill scored by its best-matching text)."""
        import numpy as np

        if not self._owners:
            return []
        query = np.asarray(self.embeddings.embed_query(prompt), dtype="float32")
        query /= np.linalg.norm(query) or 1.0
        scores = self._matrix @ query
        best: dict[str, float] = {}
        for owner, score in zip(self._owners, scores.tolist(), strict=True):
            if score > best.get(owner, -1.0):
                best[owner] = score
        ranked = sorted(best.items(), key=lambda item: item[1], reverse=True)
        return [(self.registry.skills[name], round(score, 4)) for name, score in ranked[:k] if score >= min_relevance]


_indexes: dict[tuple[int, int], SkillIndex] = {}
_lock = threading.Lock()


def get_index(registry: SkillRegistry, embeddings: Embeddings) -> SkillIndex:
    """Return the process-wide index for this registry and embedding model (built once)."""
    key = (id(registry), id(embeddings))
    with _lock:
        index = _indexes.get(key)
        if index is None:
            index = SkillIndex(registry, embeddings)
            _indexes[key] = index
        return index
