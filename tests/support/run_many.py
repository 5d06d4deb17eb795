"""Run the GEMS graph several times in one process (used to test concurrent writers across processes).

Usage: python -m tests.support.run_many CONFIG_YAML PREFIX COUNT
"""

from __future__ import annotations

import sys

from langgraph.checkpoint.memory import InMemorySaver

from gems.configs import load_settings
from gems.graph import build_graph, run_config


def main(config: str, prefix: str, count: int) -> None:
    settings = load_settings(config)
    graph = build_graph(checkpointer=InMemorySaver())
    for i in range(count):
        thread = f"{prefix}-{i}"
        graph.invoke(
            {"prompt": f"{prefix} scene {i}: a red cat on a mat"}, run_config(settings, thread), context=settings
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
