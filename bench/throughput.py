"""Does `gems bench` keep the generator busy? Wall time against the generator-bound lower bound.

Local servers on 127.0.0.1 with fixed latencies stand in for real models: the generator renders one image at a
time (like one GPU), the MLLM answers many requests at once (like a vLLM server). 40 prompts run through the full
`gems` method; every generator second is unavoidable, so the lower bound on wall time is the sum of generator
latencies. Target: wall / lower bound <= 1.15 (the MLLM work of other prompts hides behind the generator).

    python bench/throughput.py [--prompts 40] [--concurrency 8] [--gen-latency 0.25] [--mllm-latency 0.15]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support, the offline server kit

from gems.configs import GemsSettings
from gems.interfaces.bench.runner import run_bench
from tests.support.servers import GeneratorStub, OpenAIStub, ScriptedMLLM

TARGET = 1.15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--gen-latency", type=float, default=0.25)
    parser.add_argument("--mllm-latency", type=float, default=0.15)
    args = parser.parse_args()

    # Every criterion fails on its 1st, 3rd, ... check: prompts need one or two rounds, as in real runs.
    scripted = ScriptedMLLM(
        criteria=["Is the object there?", "Is its colour right?", "Is it placed right?"],
        verdict=lambda q, n: "yes" if n % 2 == 0 else "no",
    )

    def slow_chat(body):
        time.sleep(args.mllm_latency)
        return scripted(body)

    mllm = OpenAIStub(chat=slow_chat).start()
    gen = GeneratorStub(latency=args.gen_latency).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prompts = Path(tmp) / "prompts.txt"
            prompts.write_text("\n".join(f"scene {i}: a red cube left of a blue sphere" for i in range(args.prompts)))
            settings = GemsSettings.model_validate({
                "data_dir": tmp,
                "mllm": {"base_url": mllm.base_url, "model": "stub", "api_key": "x", "max_retries": 0},
                "generator": {"backend": "http", "preset": None, "url": gen.url, "max_retries": 0},
                "memory": {"lessons": False},
                "skills": {"top_k": 20},
            })  # fmt: skip
            # One-time process start-up (importing LangGraph, LangChain, the nodes: ~1.5 s) is not scheduling;
            # import before the clock starts, and report it separately.
            t0 = time.perf_counter()
            import gems.graph.builder  # noqa: F401

            startup = time.perf_counter() - t0
            started = time.perf_counter()
            summary = run_bench(prompts, settings, "gems", Path(tmp) / "out", concurrency=args.concurrency,
                                scorer="none", progress=False)  # fmt: skip
            wall = time.perf_counter() - started
    finally:
        mllm.stop()
        gen.stop()
    images = len(gen.prompts)
    bound = images * args.gen_latency
    print(f"{summary['finished']} prompts, {images} images, {sum(scripted.calls.values())} MLLM calls, "
          f"concurrency {args.concurrency}")  # fmt: skip
    print(f"generator-bound lower bound: {bound:.2f}s ({images} x {args.gen_latency}s); wall: {wall:.2f}s "
          f"(plus {startup:.2f}s of imports before the run)")  # fmt: skip
    ratio = wall / bound
    print(f"wall / lower bound: {ratio:.3f} (target <= {TARGET}) {'OK' if ratio <= TARGET else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
