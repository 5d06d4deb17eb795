"""Start-up and per-round overhead of gems' own work, on zero-latency local servers, beside the reference GEMS code.

Every model answers at once (scripted OpenAI-compatible MLLM and generator servers on 127.0.0.1), so the times are
gems' own: imports, embedding model, skill retrieval, checkpoints, prompt building. Printed, for the default config
(lessons on, 9 skills retrieved top-4 with the local embedding model):

- launch -> first MLLM request, and the whole process, of a 1-round `gems generate` (criteria pass at once), after
  one earlier run in the same data dir (which embedded the skill library; that first run is shown too);
- whole-process time of `gems memory list`, `gems skills list` and `gems --help`;
- per-round overhead: the median server-side time between successive generator requests of a 10-round run
  (3 verify, 1 compress, 1 refine, 1 generator call per round).

With `--reference DIR` (a checkout of the authors' GEMS code, github.com/lcqysl/GEMS) its agent runs on the same
kind of servers in the same script and the ratios are printed. Targets: first request <= 2 s; 1-round run <= 4x the
reference process; memory/skills list <= 2 s; per round <= 2x the reference.

    python bench/startup.py [--reference PATH] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support, the offline server kit

import yaml

from tests.support.servers import GeneratorStub, OpenAIStub, ScriptedMLLM, user_text

CRITERIA = ["Is there a cat?", "Is the cat red?", "Is the cat on a mat?"]
GEMS = [sys.executable, "-m", "gems.interfaces.cli"]
REFERENCE_DRIVER = """
import sys
from agent.GEMS import GEMS
agent = GEMS(gen_url=sys.argv[1], mllm_url=sys.argv[2], max_iterations=int(sys.argv[3]))
agent.run({"prompt": "a red cat on a mat"})
"""


def reference_chat(verdict: str):
    """Answers the reference agent's single-user-message requests by what each asks for."""

    def chat(body: dict) -> str | dict:
        text = user_text(body)
        if "SKILL_ID" in text:
            return "NONE"
        if "JSON ARRAY" in text:
            return json.dumps(CRITERIA)
        if "'yes' or 'no'" in text:
            return verdict
        if "Summarize the experience" in text:
            return "Lesson: make the failed parts explicit."
        return {"content": "a refined prompt", "reasoning_content": "make the colour explicit"}  # it reads both

    return chat


def timed(args: list[str], env: dict, cwd: Path | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} failed:\n{result.stderr[-2000:]}")
    return elapsed


def gaps(arrivals: list[float]) -> float:
    return statistics.median(b - a for a, b in itertools.pairwise(arrivals))


def measure_gems(tmp: Path, repeat: int) -> dict[str, float]:
    keys = ("first", "cold", "run1", "memory", "skills", "help", "round")
    out: dict[str, list[float]] = {k: [] for k in keys}
    for n in range(repeat):
        data = tmp / f"data-{n}"  # fresh: the first run embeds the skill library, later runs read its cache
        for rounds, verdict, label in ((1, "yes", "cold"), (1, "yes", "run1"), (10, "no", "round")):
            mllm = OpenAIStub(chat=ScriptedMLLM(criteria=CRITERIA, verdict=lambda q, k, v=verdict: v)).start()
            gen = GeneratorStub().start()
            config = tmp / f"gems-{n}-{label}.yaml"
            config.write_text(yaml.safe_dump({
                "data_dir": str(data),
                "mllm": {"base_url": mllm.base_url, "model": "stub", "api_key": "sk", "max_retries": 0},
                "generator": {"backend": "http", "preset": None, "url": gen.url, "max_retries": 0},
            }))  # fmt: skip
            env = {**os.environ, "GEMS_CONFIG": str(config), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            args = [*GEMS, "generate", f"a red cat on a mat ({label})", "--max-rounds", str(rounds), "--quiet"]
            started = time.perf_counter()
            elapsed = timed([*args, "--out", str(tmp / f"out-{n}-{label}")], env)
            if label == "round":
                out["round"].append(gaps(gen.arrivals))
            else:
                out[label].append(elapsed)
            if label == "run1":
                out["first"].append(mllm.arrivals[0] - started)
                out["memory"].append(timed([*GEMS, "memory", "list"], env))
                out["skills"].append(timed([*GEMS, "skills", "list"], env))
                out["help"].append(timed([*GEMS, "--help"], env))
            mllm.stop()
            gen.stop()
    return {k: statistics.median(v) for k, v in out.items()}


def measure_reference(path: Path, repeat: int) -> dict[str, float]:
    out: dict[str, list[float]] = {"first": [], "run1": [], "round": []}
    for _ in range(repeat):
        for rounds, verdict in ((1, "yes"), (10, "no")):
            mllm = OpenAIStub(chat=reference_chat(verdict)).start()
            gen = GeneratorStub().start()
            started = time.perf_counter()
            args = [sys.executable, "-c", REFERENCE_DRIVER, gen.url, mllm.base_url, str(rounds)]
            elapsed = timed(args, {**os.environ, "PYTHONPATH": str(path)}, cwd=path)
            if rounds == 1:
                out["run1"].append(elapsed)
                out["first"].append(mllm.arrivals[0] - started)
            else:
                out["round"].append(gaps(gen.arrivals))
            mllm.stop()
            gen.stop()
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, help="a checkout of the authors' GEMS code")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gems = measure_gems(Path(tmp), args.repeat)
    ref = measure_reference(args.reference, args.repeat) if args.reference else {}

    def row(label: str, key: str, unit: float = 1.0, target: str = "") -> None:
        mine = gems[key] * unit
        theirs = ref.get(key)
        ratio = f"{mine / (theirs * unit):.2f}x" if theirs else "-"
        shown = f"{theirs * unit:.3f}" if theirs else "-"
        print(f"| {label} | {mine:.3f} | {shown} | {ratio} | {target} |")

    print(f"median of {args.repeat}; seconds unless said")
    print("| measure | gems | reference | gems / reference | target |")
    print("|---|---|---|---|---|")
    row("launch -> first MLLM request", "first", target="<= 2 s")
    row("1-round run, whole process", "run1", target="<= 4x reference")
    print(f"| 1-round run, first in a new data dir (embeds the skill library once) | {gems['cold']:.3f} | - | - | |")
    row("per round (ms, between generator requests)", "round", unit=1000.0, target="<= 2x reference")
    row("gems memory list", "memory", target="<= 2 s")
    row("gems skills list", "skills", target="<= 2 s")
    row("gems --help", "help")


if __name__ == "__main__":
    main()
