"""The methods of the paper's tables, as settings of one graph (or one call for the baselines).

- `original`: one generation from the prompt as written.
- `rewrite`: one MLLM rewrite, then one generation.
- `search`: best-of-N by the verifier: N candidates in one round, the one passing the most criteria wins.
- `loop`: the loop alone (the refiner sees only the last attempt; no skills, no lessons): Fig. 4's "Agent Loop".
- `gems`: the full method, with the config's settings (`configs/ablations/` holds Fig. 4's other rows); in a bench,
  lessons from other prompts only when a config file turns them on (see `runner.run_bench`).
"""

from __future__ import annotations

import time
from typing import Any

from gems.configs import ConfigError, GemsSettings
from gems.graph.builder import continuation, run_config
from gems.interfaces.benchmarks.datasets import BenchPrompt
from gems.memory.trajectory import run_result
from gems.nodes.calls import ask, blocking, render
from gems.nodes.generate import seed_for
from gems.nodes.parsing import clean_prompt
from gems.nodes.prompts.rewrite import REWRITE_SYSTEM
from gems.nodes.runtime import artifact_store

METHODS = ("original", "rewrite", "search", "loop", "gems")


def method_settings(method: str, base: GemsSettings, search_n: int = 5) -> GemsSettings:
    """The settings that make the graph behave as `method`."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of: {', '.join(METHODS)}")
    if method == "gems":
        return base
    no_skills = base.skills.model_copy(update={"enabled": False})
    if method == "loop":
        memory = base.memory.model_copy(update={"mode": "last", "lessons": False})
        return base.model_copy(update={"skills": no_skills, "memory": memory})
    if method == "search":
        loop = base.loop.model_copy(update={"max_rounds": 1, "images_per_round": search_n})
        memory = base.memory.model_copy(update={"lessons": False})
        return base.model_copy(update={"skills": no_skills, "memory": memory, "loop": loop})
    return base


async def _one_shot(method: str, item: BenchPrompt, settings: GemsSettings) -> dict[str, Any]:
    """original / rewrite: no criteria, no loop; the same result shape as a graph run."""
    usage: dict[str, float] = {}
    prompt, mllm_calls = item.prompt, 0
    if method == "rewrite":
        reply = await ask(settings.mllm, REWRITE_SYSTEM, item.prompt)
        prompt = clean_prompt(reply.text) or item.prompt
        mllm_calls = 1
        usage = {k: float(reply.usage.get(k, 0)) for k in ("input_tokens", "output_tokens")}
    started = time.perf_counter()
    (rendered,) = await render(settings.generator, prompt, [seed_for(settings.loop.seed, 1, 0, 1)])
    busy = time.perf_counter() - started
    ref = await blocking(lambda: artifact_store(settings).put_bytes(rendered.data, **rendered.meta, candidate=0))
    state: dict[str, Any] = {
        "prompt": item.prompt,
        "criteria": [],
        "rounds": [{"round": 1, "prompt": prompt, "image": ref, "passed": [], "failed": [], "experience": None}],
        "final": {"round": 1, "image": ref, "passed": None, "total": None},
        "success": None,
        "mllm_calls": mllm_calls,
        "generator_calls": 1,
        "usage": usage,
        "timings": {"generator_busy": busy},
    }
    return run_result(state, artifacts_dir=settings.artifacts_dir)


async def _agraph_run(item: BenchPrompt, settings: GemsSettings, graph: Any, thread_id: str) -> dict[str, Any]:
    config = run_config(settings, thread_id)
    pending, run_input = continuation(await graph.aget_state(config), item.prompt, settings)
    if pending:
        await graph.ainvoke(run_input, config, context=settings, durability="sync")
    values = (await graph.aget_state(config)).values
    return run_result(values, thread_id=thread_id, artifacts_dir=settings.artifacts_dir)


def _cost(result: dict[str, Any]) -> dict[str, Any]:
    usage, timings, counts = result.get("usage") or {}, result.get("timings") or {}, result.get("counts") or {}
    return {
        "mllm_calls": counts.get("mllm_calls", 0),
        "input_tokens": int(usage.get("input_tokens", 0)),
        "output_tokens": int(usage.get("output_tokens", 0)),
        "image_parts": int(usage.get("image_parts", 0)),
        "generator_calls": counts.get("generator_calls", 0),
        "generator_busy_s": round(timings.get("generator_busy", timings.get("generate", 0.0)), 4),
    }


async def arun_method(
    method: str, item: BenchPrompt, settings: GemsSettings, graph: Any, thread_id: str | None = None
) -> dict[str, Any]:
    """Run one prompt with one method and return its record: the run's result plus bench fields (no score yet).

    The graph runs with `ainvoke` and an async checkpointer, so many prompts share one event loop.
    """
    started = time.perf_counter()
    if method in ("original", "rewrite"):
        result = await _one_shot(method, item, settings)
    else:
        result = await _agraph_run(item, settings, graph, thread_id or f"{method}-{item.id}")
    return _record(result, item, method, started)


def _record(result: dict[str, Any], item: BenchPrompt, method: str, started: float) -> dict[str, Any]:
    cost = {**_cost(result), "wall_s": round(time.perf_counter() - started, 4)}
    return {**result, "id": item.id, "categories": item.categories, "method": method, "cost": cost}
