"""Skill retrieval: embed each skill's description and trigger examples once, then rank skills for a prompt.

The router only ever sees the top-k candidates, so its prompt stays the same size with 8 or 1,000 skills.
"""

from __future__ import annotations

import threading

from langchain_core.embeddings import Embeddings
from langgraph.store.base import PutOp
from langgraph.store.memory import InMemoryStore

from gems.skills.registry import Skill, SkillRegistry


def routing_texts(skill: Skill) -> list[str]:
    """What a skill is matched on: its name and description, plus any `metadata.examples` prompts."""
    examples = skill.metadata.get("examples") or []
    return [f"{skill.name.replace('-', ' ')}: {skill.description}", *[str(e) for e in examples]]


class SkillIndex:
    """Every routing text of a registry in a LangGraph `InMemoryStore` with a semantic index (cosine similarity)."""

    def __init__(self, registry: SkillRegistry, embeddings: Embeddings):
        self.registry = registry
        self.size = sum(len(routing_texts(skill)) for skill in registry.skills.values())
        self.store = InMemoryStore(
            index={"dims": len(embeddings.embed_query("skill")), "embed": embeddings, "fields": ["text"]}
        )
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
