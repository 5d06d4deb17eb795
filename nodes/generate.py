"""Generator role: render the round's prompt (or edit an earlier image) and store each image in the artifact store."""

from __future__ import annotations

import random
from typing import Any

from langgraph.runtime import Runtime

from gems.configs import GemsSettings, context_settings
from gems.memory.state import GemsState, ImageRef
from gems.nodes.calls import blocking, edit, render
from gems.nodes.chat import run_links
from gems.nodes.generators import editor_settings
from gems.nodes.runtime import artifact_store, pinned, timed

_rng = random.SystemRandom()


def seed_for(base: int | None, round_no: int, candidate: int, per_round: int) -> int:
    """A fixed base seed gives reproducible, distinct seeds per round and candidate; none draws a fresh one."""
    if base is None:
        return _rng.randrange(2**31)
    return base + (round_no - 1) * per_round + candidate


async def generate(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Render this round's candidates, or edit the base image when the refiner chose an edit for this round.

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
    # The run's own options as it started (kept in state), not a resuming caller's defaults.
    options = pinned(state, settings)
    base_seed = options["seed"]
    count = options["images_per_round"] if has_criteria else 1
    store = artifact_store(settings)
    timings: dict[str, float] = {}
    candidates: list[ImageRef] = []
    seeds = [seed_for(base_seed, round_no, c, count) for c in range(count)]
    action = state.get("action") or {}
    editing = has_criteria and action.get("mode") == "edit" and action.get("round") == round_no
    with timed(timings, "generate"):
        if editing:
            editor = editor_settings(settings)
            image = await blocking(store.read_bytes, action["base_image"])
            results = await edit(editor, image, prompt, seeds)
        else:
            results = await render(settings.generator, prompt, seeds)
        # Time the generator itself was busy (excludes waiting for a shared pipeline): bench cost accounting.
        busy = sum(rendered.meta.pop("busy_s", 0.0) for rendered in results)
        timings["generator_busy"] = round(timings.get("generator_busy", 0.0) + busy, 6)
        refs = await blocking(lambda: [store.put_bytes(r.data, **r.meta, candidate=c) for c, r in enumerate(results)])
        candidates.extend(ImageRef(**ref) for ref in refs)  # type: ignore[typeddict-item]
    links = await run_links(settings)
    runtime.stream_writer({"event": "image", "round": round_no, "image_urls": [links.image(r) for r in candidates]})
    return {
        "round": round_no,
        "current_prompt": prompt,
        "candidates": candidates,
        "generator_calls": count,
        "timings": timings,
    }
