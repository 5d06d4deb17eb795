"""`embed_texts` for langgraph.json's `store.index.embed` (see the package docstring)."""

from gems.memory.embeddings import embed_texts

__all__ = ["embed_texts"]
