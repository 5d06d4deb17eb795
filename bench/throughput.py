"""Does `gems bench` keep R generator replicas busy? Wall time against the generator-bound lower bound, R = 1, 2, 4.

The generator is `gems serve-generator` on a local Ray with R replicas whose pipeline is a latency model: one call
for a batch of k images takes a + b*k seconds (like a GPU, which renders a batch in little more than one image's
time). The MLLM is a local OpenAI-compatible server in another process that answers any number of requests at once
after a fixed latency (like vLLM). `gems bench --concurrency 256` runs the full `gems` method on 192*R prompts
(R=4: 768, about GenEval2's 800); with fewer prompts per replica the fixed ramp-up and last-round tail weigh more
(96*R prompts at R=4 measured 1.19).

Every generator second is unavoidable, so with full batches of B the wall time is at least
    bound = images * (a + b*B) / B / R.
Targets: wall <= 1.15 x bound at every R, and scaling efficiency (prompts/hour at R=4 over 4 x R=1) >= 0.85.
Also printed: prompts per hour, the generator's busy fraction (pipeline seconds / (wall x R)) and the
orchestrator's own CPU per round (this process; the servers run in other processes).

Two replica designs run side by side at every R: `merge`, the service's own (up to 64 `@serve.batch` batches at
once; whichever takes the pipeline renders everything waiting by then), and `serve`, Serve's batching alone (one
batch at a time, rendered as formed). The ratio of their prompts per hour is printed: the service should go back to
Serve's batching alone once that reaches 0.9 of the merging layer's.

    python bench/throughput.py [--replicas 1 2 4] [--designs serve merge] [--prompts-per-replica 192]
                               [--concurrency 256] [--a 0.5] [--b 0.25] [--batch 8] [--mllm-latency 0.3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support, the offline server kit

TARGET_RATIO = 1.15
TARGET_EFFICIENCY = 0.85
KEEP_SIMPLE_AT = 0.90  # the simpler design (Serve's batching alone) is kept from this share of the other's rate
DESIGNS = {"merge": "@serve.batch plus merging (the service)", "serve": "@serve.batch alone"}


class LatencyPipeline:
    """A diffusers-shaped pipeline whose call for k prompts sleeps a + b*k seconds and returns k flat images."""

    def __init__(self, a: float, b: float):
        self.a, self.b = a, b

    def __call__(self, prompt, generator=None, num_inference_steps=None, guidance_scale=None, width=64, height=64):
        from PIL import Image

        prompts = prompt if isinstance(prompt, list) else [prompt]
        time.sleep(self.a + self.b * len(prompts))
        return SimpleNamespace(images=[Image.new("RGB", (width or 64, height or 64), (40, 90, 200)) for _ in prompts])


def _serve_mllm(ready: Any, latency: float) -> None:
    """The MLLM in its own process: a fixed latency per request, any number at once."""
    from tests.support.servers import OpenAIStub, ScriptedMLLM

    # Each criterion fails on its 1st, 3rd, ... check: prompts need one or two rounds, as in real runs.
    scripted = ScriptedMLLM(
        criteria=["Is the object there?", "Is its colour right?", "Is it placed right?"],
        verdict=lambda q, n: "yes" if n % 2 == 0 else "no",
    )

    def chat(body: dict) -> Any:
        time.sleep(latency)
        return scripted(body)

    server = OpenAIStub(chat=chat).start()
    ready.put(server.base_url)
    while True:
        time.sleep(3600)


def serve_alone_replica() -> Any:
    """The service's replica with Serve's batching alone: one `@serve.batch` batch at a time, rendered as formed
    (no merging of the batches that wait for the pipeline)."""
    from ray import serve

    from gems.interfaces import generator_service

    class ServeAloneReplica(generator_service.PipelineReplica.func_or_class):
        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, max_concurrent_batches=1)
        async def render_batch(self, jobs: list[Any]) -> list[dict[str, Any]]:
            results = await self.render_jobs(jobs)
            await self.counters.report.remote(self.replica, dict(self.totals))
            return results

    return serve.deployment(name=generator_service.REPLICA, health_check_period_s=10)(ServeAloneReplica)


def run_once(replicas: int, design: str, args: argparse.Namespace, mllm_url: str, tmp: Path) -> dict[str, Any]:
    import httpx

    from gems.configs import GemsSettings, GeneratorSettings
    from gems.interfaces import generator_service
    from gems.interfaces.benchmarks.runner import run_bench

    port = 18470
    gen = GeneratorSettings(backend="diffusers", preset=None, model="latency-model", width=64, height=64, device="cpu")
    url = generator_service.start(
        gen, replicas=replicas, max_batch_size=args.batch, batch_wait_ms=args.batch_wait_ms, port=port,
        pipeline_factory=lambda: LatencyPipeline(args.a, args.b),
        replica=serve_alone_replica() if design == "serve" else None,
        ray_init={"num_cpus": max(8, max(args.replicas) + 2), "log_to_driver": False},
    )  # fmt: skip
    before = httpx.get(f"{url}/health", timeout=30).json()
    name = f"{design}-{replicas}"
    prompts = tmp / f"prompts-{name}.txt"
    count = args.prompts_per_replica * replicas
    prompts.write_text("\n".join(f"scene {i}: a red cube left of a blue sphere" for i in range(count)))
    settings = GemsSettings.model_validate({
        "data_dir": str(tmp / f"data-{name}"),
        "mllm": {"base_url": mllm_url, "model": "stub", "api_key": "x", "max_retries": 0, "timeout_s": 120},
        "generator": {"backend": "http", "preset": None, "url": f"{url}/generate", "max_retries": 0,
                      "timeout_s": 600},
        "memory": {"lessons": False},
        "skills": {"enabled": False},
    })  # fmt: skip
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = run_bench(prompts, settings, "gems", tmp / f"out-{name}", concurrency=args.concurrency,
                        scorer="none", progress=False)  # fmt: skip
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    after = httpx.get(f"{url}/health", timeout=30).json()
    images = after["images"] - before["images"]
    calls = after["pipeline_calls"] - before["pipeline_calls"]
    busy = after["busy_s"] - before["busy_s"]
    rounds = round(summary["rounds_used"] * summary["finished"])
    bound = images * (args.a + args.b * args.batch) / args.batch / replicas
    return {
        "replicas": replicas,
        "design": design,
        "prompts": summary["finished"],
        "errors": len(summary["errors"]),
        "images": images,
        "pipeline_calls": calls,
        "rounds": rounds,
        "wall_s": wall,
        "bound_s": bound,
        "ratio": wall / bound,
        "prompts_per_hour": summary["finished"] / wall * 3600,
        "busy_fraction": busy / (wall * replicas),
        "cpu_ms_per_round": cpu / max(1, rounds) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--designs", nargs="+", choices=list(DESIGNS), default=list(DESIGNS))
    parser.add_argument("--prompts-per-replica", type=int, default=192)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--a", type=float, default=0.5, help="seconds per pipeline call")
    parser.add_argument("--b", type=float, default=0.25, help="seconds per image in a call")
    parser.add_argument("--batch", type=int, default=8, help="--max-batch-size of the service")
    parser.add_argument("--batch-wait-ms", type=float, default=50.0)
    parser.add_argument("--mllm-latency", type=float, default=0.3)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    mllm = context.Process(target=_serve_mllm, args=(ready, args.mllm_latency), daemon=True)
    mllm.start()
    mllm_url = ready.get(timeout=60)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for replicas in args.replicas:
                # The designs alternate at each R, so a load change on the machine weighs on both alike.
                for design in args.designs if replicas % 2 else args.designs[::-1]:
                    rows.append(run_once(replicas, design, args, mllm_url, Path(tmp)))
                    row = rows[-1]
                    print(f"R={replicas} {design}: {row['prompts']} prompts ({row['errors']} failed), {row['images']} "
                          f"images in {row['pipeline_calls']} pipeline calls, wall {row['wall_s']:.1f}s",
                          flush=True)  # fmt: skip
    finally:
        from ray import serve

        serve.shutdown()
        mllm.terminate()

    per_image = (args.a + args.b * args.batch) / args.batch
    print(f"\ngenerator latency model: {args.a}s + {args.b}s x batch (full batch of {args.batch}: "
          f"{per_image:.3f}s per image); MLLM {args.mllm_latency}s per call; "
          f"--concurrency {args.concurrency}\n")  # fmt: skip
    print("| design | replicas | prompts | images | pipeline calls | wall (s) | bound (s) | wall / bound "
          "| prompts/hour | generator busy | orchestrator CPU per round |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        flag = "" if row["ratio"] <= TARGET_RATIO else " (above target)"
        print(f"| {row['design']} | {row['replicas']} | {row['prompts']} | {row['images']} | {row['pipeline_calls']} | "
              f"{row['wall_s']:.1f} | {row['bound_s']:.1f} | {row['ratio']:.3f}{flag} | "
              f"{row['prompts_per_hour']:.0f} | {row['busy_fraction']:.0%} | "
              f"{row['cpu_ms_per_round']:.1f} ms |")  # fmt: skip
    by = {(row["design"], row["replicas"]): row for row in rows}
    print()
    for design in args.designs:
        if (design, 1) in by and (design, 4) in by:
            efficiency = by[design, 4]["prompts_per_hour"] / (4 * by[design, 1]["prompts_per_hour"])
            verdict = "OK" if efficiency >= TARGET_EFFICIENCY else "BELOW TARGET"
            print(f"{design}: scaling efficiency 1 -> 4 replicas: {efficiency:.3f} (target >= {TARGET_EFFICIENCY}) "
                  f"{verdict}")  # fmt: skip
        worst = max(row["ratio"] for row in rows if row["design"] == design)
        verdict = "OK" if worst <= TARGET_RATIO else "ABOVE TARGET"
        print(f"{design}: worst wall / bound: {worst:.3f} (target <= {TARGET_RATIO}) {verdict}")
    both = [r for r in args.replicas if ("serve", r) in by and ("merge", r) in by]
    if both:
        for r in both:
            share = by["serve", r]["prompts_per_hour"] / by["merge", r]["prompts_per_hour"]
            print(f"R={r}: prompts/hour, {DESIGNS['serve']} / {DESIGNS['merge']}: {share:.3f}")
        prompts = {d: sum(by[d, r]["prompts"] for r in both) for d in ("serve", "merge")}
        walls = {d: sum(by[d, r]["wall_s"] for r in both) for d in ("serve", "merge")}
        share = (prompts["serve"] / walls["serve"]) / (prompts["merge"] / walls["merge"])
        verdict = "keep Serve's batching alone" if share >= KEEP_SIMPLE_AT else "keep the merging layer"
        print(f"all R: prompts/hour, {DESIGNS['serve']} / {DESIGNS['merge']}: {share:.3f} "
              f"(>= {KEEP_SIMPLE_AT}: keep the simpler) -> {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
