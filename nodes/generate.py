"""Generator role: render the round's prompt and store each image in the artifact store."""

from __future__ import annotations

import random
from typing import Any

from langgraph.runtime import Runtime

from gems.configs import GemsSettings, context_settings
from gems.memory.state import GemsState, ImageRef
from gems.nodes.generators import get_generator
from gems.nodes.runtime import artifact_store, timed

_rng = random.SystemRandom()


def seed_for(base: int | None, round_no: int, candidate: int, per_round: int) -> int:
    """A fixed base seed gives reproducible, distinct seeds per round and candidate; none draws a fresh one."""
    if base is None:
        return _rng.randrange(2**31)
    return base + (round_no - 1) * per_round + candidate


def generate(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Render this round's candidates.

    With no criteria the original prompt is rendered once (nothing could judge a refinement).

    Args:
        state: `current_prompt`, `criteria`, `round`.
        runtime: the run's settings as context.

    Returns:
        `round` (incremented), `candidates` (image references) and counters.

    Raises:
        GeneratorError: with a one-line message; the checkpoint before this step is kept for `--resume`.
    """
    settings = context_settings(runtime.context)
    round_no = state.get("round", 0) + 1
    has_criteria = bool(state.get("criteria"))
    prompt = (state.get("current_prompt") or state["prompt"]) if has_criteria else state["prompt"]
    count = settings.loop.images_per_round if has_criteria else 1
    generator = get_generator(settings.generator)
    store = artifact_store(settings)
    timings: dict[str, float] = {}
    candidates: list[ImageRef] = []
    seeds = [seed_for(settings.loop.seed, round_no, c, count) for c in range(count)]
    with timed(timings, "generate"):
        # Local pipelines render all candidates in one batch; remote backends take one request per image.
        batch = getattr(generator, "render_many", None)
        results = batch(prompt, seeds) if batch and count > 1 else [generator.render(prompt, s) for s in seeds]
        for candidate, rendered in enumerate(results):
            # Time the generator itself was busy (excludes waiting for a shared pipeline): bench cost accounting.
            timings["generator_busy"] = round(timings.get("generator_busy", 0.0) + rendered.meta.pop("busy_s", 0.0), 6)
            ref = store.put_bytes(rendered.data, **rendered.meta, candidate=candidate)
            candidates.append(ImageRef(**ref))  # type: ignore[typeddict-item]
    return {
        "round": round_no,
        "current_prompt": prompt,
        "candidates": candidates,
        "generator_calls": count,
        "timings": timings,
    }
