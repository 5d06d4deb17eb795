"""The compiled gems graph is a Runnable: compose it with LCEL like any other chain step.

python examples/lcel_chain.py "a lighthouse"
"""

from __future__ import annotations

import sys

from langchain_core.runnables import RunnableLambda

from gems.configs import load_settings
from gems.graph import build_graph, run_config
from gems.memory.trajectory import run_result


def make_chain():
    settings = load_settings()
    graph = build_graph()  # no checkpointer: one-shot runs, nothing to resume
    to_request = RunnableLambda(lambda subject: {"prompt": f"{subject}, at dusk, seen from the sea"})
    # State names images by digest; the public result, given the artifact folder, has each file's path.
    to_path = RunnableLambda(lambda result: run_result(result, settings=settings)["final"]["image"]["path"])
    # `bind` carries the run settings as the graph's context; LCEL `|` would not forward a context= argument.
    return to_request | graph.bind(context=settings).with_config(run_config(settings)) | to_path


if __name__ == "__main__":
    chain = make_chain()
    subjects = sys.argv[1:] or ["a lighthouse"]
    for subject, path in zip(subjects, chain.batch(subjects), strict=True):
        print(f"{subject}: {path}")
