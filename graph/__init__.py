"""The GEMS graph: `build_graph()` for embedding, `graph` for LangGraph servers, `run_config()` per run."""

from gems.graph.builder import build_builder, build_graph, continuation, graph, run_config, run_input

__all__ = ["build_builder", "build_graph", "continuation", "graph", "run_config", "run_input"]
