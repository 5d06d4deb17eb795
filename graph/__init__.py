"""The GEMS graph: `build_graph()` for embedding, `graph` for LangGraph servers, `run_config()` per run."""

from __future__ import annotations

from typing import Any

__all__ = ["build_builder", "build_graph", "graph", "run_config"]


def __getattr__(name: str) -> Any:
    # Lazy, so `gems.graph.state` can be imported by the nodes without importing the builder (and the nodes).
    if name in __all__:
        from gems.graph import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'gems.graph' has no attribute {name!r}")
