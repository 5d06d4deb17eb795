"""Skill routing at scale: the planner's prompt stays the same size with 8 or 1,000 skills.

Generates 1,000 skills next to the bundled library, indexes them with the same embedding model gems uses, and for
each sample prompt prints the candidate manifest the planner sees (characters), the retrieval time, and the size a
full manifest (the reference implementation's approach) would have. The ratio line is the point.

    python bench/skill_routing.py [--skills 1000] [--top-k 4]
    python bench/skill_routing.py --live --config default   # also ask a real planner model on every sample

`--live` runs the planning steps (retrieval, the planner's tool call, the skill's rewrite) against the configured
MLLM endpoint and prints routing accuracy on bench/routing_samples.json, plain prompts included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from gems.configs import load_settings
from gems.memory.embeddings import get_embeddings
from gems.nodes.prompts.plan import PLANNER_SYSTEM
from gems.skills import SkillRegistry, bundled_library
from gems.skills.retrieval import SkillIndex

HERE = Path(__file__).resolve().parent
TOPICS = [
    "watercolour",
    "origami",
    "isometric",
    "pixel-art",
    "blueprint",
    "mosaic",
    "embroidery",
    "neon",
    "charcoal",
    "ukiyo-e",
    "vaporwave",
    "claymation",
    "stained-glass",
    "low-poly",
    "art-nouveau",
    "graffiti",
]


def generate_library(root: Path, count: int) -> None:
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        folder = root / f"style-{i:04d}"
        folder.mkdir(parents=True)
        (folder / "SKILL.md").write_text(
            f"---\nname: style-{i:04d}\ndescription: >-\n  Renders the scene as {topic}, variant {i}, with its typical "
            f"materials, palette and linework. Use when the request asks for {topic} or style {i}. Do not use for "
            f"photographs or other styles.\n---\n# Style {i}\n\nDescribe the scene as a {topic} piece.\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skills", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--live", action="store_true", help="also route every sample with the configured model")
    parser.add_argument("--config", help="config for --live (and the embedding model)")
    args = parser.parse_args()

    settings = load_settings(args.config)
    samples = json.loads((HERE / "routing_samples.json").read_text())["samples"]
    embeddings = get_embeddings(settings.embeddings)
    with tempfile.TemporaryDirectory() as tmp:
        generate_library(Path(tmp), args.skills)
        registry = SkillRegistry()
        registry.add_folder(bundled_library())
        registry.add_folder(Path(tmp))
        started = time.perf_counter()
        index = SkillIndex(registry, embeddings)
        build_s = time.perf_counter() - started

        full_manifest = len(registry.manifest())
        sizes, times, hits = [], [], 0
        for sample in samples:
            started = time.perf_counter()
            found = index.search(sample["prompt"], k=args.top_k)
            times.append(time.perf_counter() - started)
            manifest = registry.manifest([s.name for s, _ in found])
            sizes.append(len(PLANNER_SYSTEM.format(max_active=1, manifest=manifest, lessons="")))
            hits += sample["skill"] is not None and sample["skill"] in [s.name for s, _ in found]
        triggers = sum(s["skill"] is not None for s in samples)

    print(f"library: {len(registry)} skills ({len(registry) - args.skills} bundled), index built in {build_s:.1f}s")
    print(f"planner prompt per request (top-{args.top_k} candidates): median {statistics.median(sizes):,.0f} chars, "
          f"max {max(sizes):,} chars")  # fmt: skip
    print(f"full manifest of every skill (reference approach): {full_manifest:,} chars")
    print(f"ratio full manifest / planner prompt: {full_manifest / statistics.median(sizes):.0f}x")
    print(f"retrieval per prompt: median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")
    print(f"expected skill among the top-{args.top_k} candidates: {hits}/{triggers} sample prompts")

    if args.live:
        live(settings, samples)


def live(settings, samples) -> None:
    """Route every sample through the real planner (retrieval, tool calls, rewrite) and score the choice."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph

    from gems.graph.routing import route_after_plan
    from gems.memory.state import GemsState
    from gems.nodes.plan import plan, prepare
    from gems.skills.tools import SKILL_TOOLS

    settings = settings.model_copy(update={"memory": settings.memory.model_copy(update={"lessons": False})})
    from langgraph.prebuilt import ToolNode

    builder = StateGraph(GemsState, context_schema=type(settings))
    builder.add_node("plan", plan)
    builder.add_node("skills", ToolNode(SKILL_TOOLS, handle_tool_errors=True))
    builder.add_node("prepare", prepare)
    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", route_after_plan, ["skills", "prepare"])
    builder.add_edge("skills", "plan")
    builder.add_edge("prepare", END)
    planning = builder.compile(checkpointer=InMemorySaver())
    correct = 0
    for i, sample in enumerate(samples):
        config = {"configurable": {"thread_id": f"route-{i}"}, "recursion_limit": 30}
        values = planning.invoke({"prompt": sample["prompt"]}, config, context=settings)
        chosen = values.get("skill")
        correct += chosen == sample["skill"]
        mark = "ok " if chosen == sample["skill"] else "XX "
        print(f"{mark} expected {sample['skill'] or 'NONE':<20} got {chosen or 'NONE':<20} {sample['prompt'][:60]}")
    print(f"routing accuracy with {settings.mllm.model}: {correct}/{len(samples)}")


if __name__ == "__main__":
    main()
