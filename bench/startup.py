"""Start-up and per-round overhead of gems' own work, on zero-latency local servers, beside the reference GEMS code.

Every model answers at once (scripted OpenAI-compatible MLLM and generator servers on 127.0.0.1), so the times are
gems' own: imports, embedding model, skill retrieval, checkpoints, prompt building. Printed, for the default config
(lessons on, 9 skills retrieved top-4 with the local embedding model):

- launch -> first MLLM request, and the whole process, of a 1-round `gems generate` (criteria pass at once), after
  one earlier run in the same data dir (which embedded the skill library; that first run is shown too);
- whole-process time of `gems memory list`, `gems skills list` and `gems --help`;
- per-round overhead: server-side time from the first to the last generator request of a 10-round run where every
  criterion fails, per round (3 verify, 1 compress, 1 refine, 1 generator call per round; 64 px images).

gems and the reference run interleaved on the same kind of servers, so a busy moment of the machine hits both.

With `--reference DIR` (a checkout of the authors' GEMS code, github.com/lcqysl/GEMS) its agent runs on the same
kind of servers in the same script and the ratios are printed. Targets: first request <= 2 s; 1-round run <= 3x the
reference process; memory/skills list <= 2 s; per round <= 1.5x the reference.

    python bench/startup.py [--reference PATH] [--repeat 3]
"""

from __future__ import annotations

import argparse
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


def per_round(arrivals: list[float]) -> float:
    """Server-side time from the first generator request to the last, per round in between."""
    return (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)


def _gems_run(tmp: Path, data: Path, label: str, rounds: int, verdict: str) -> tuple[float, OpenAIStub, GeneratorStub]:
    mllm = OpenAIStub(chat=ScriptedMLLM(criteria=CRITERIA, verdict=lambda q, k, v=verdict: v)).start()
    gen = GeneratorStub(size=64).start()
    config = tmp / f"gems-{label}.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(data),
        "mllm": {"base_url": mllm.base_url, "model": "stub", "api_key": "sk", "max_retries": 0},
        "generator": {"backend": "http", "preset": None, "url": gen.url, "max_retries": 0},
    }))  # fmt: skip
    env = {**os.environ, "GEMS_CONFIG": str(config), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [*GEMS, "generate", f"a red cat on a mat ({label})", "--max-rounds", str(rounds), "--quiet"]
    elapsed = timed([*args, "--out", str(tmp / f"out-{label}")], env)
    mllm.stop()
    gen.stop()
    return elapsed, mllm, gen


def _reference_run(path: Path, rounds: int, verdict: str) -> tuple[float, OpenAIStub, GeneratorStub]:
    mllm = OpenAIStub(chat=reference_chat(verdict)).start()
    gen = GeneratorStub(size=64).start()
    args = [sys.executable, "-c", REFERENCE_DRIVER, gen.url, mllm.base_url, str(rounds)]
    elapsed = timed(args, {**os.environ, "PYTHONPATH": str(path)}, cwd=path)
    mllm.stop()
    gen.stop()
    return elapsed, mllm, gen


def measure(tmp: Path, repeat: int, reference: Path | None) -> tuple[dict[str, float], dict[str, float]]:
    """gems and the reference, interleaved run by run (a busy moment hits both), medians of `repeat`."""
    mine: dict[str, list[float]] = {k: [] for k in ("first", "cold", "run1", "memory", "skills", "help", "round")}
    theirs: dict[str, list[float]] = {"first": [], "run1": [], "round": []}
    for n in range(repeat):
        data = tmp / f"data-{n}"  # fresh: the first run embeds the skill library, later runs read its cache
        mine["cold"].append(_gems_run(tmp, data, f"{n}-cold", 1, "yes")[0])
        started = time.perf_counter()
        elapsed, mllm, _ = _gems_run(tmp, data, f"{n}-run1", 1, "yes")
        mine["run1"].append(elapsed)
        mine["first"].append(mllm.arrivals[0] - started)
        if reference:
            started = time.perf_counter()
            elapsed, mllm, _ = _reference_run(reference, 1, "yes")
            theirs["run1"].append(elapsed)
            theirs["first"].append(mllm.arrivals[0] - started)
        mine["round"].append(per_round(_gems_run(tmp, data, f"{n}-round", 10, "no")[2].arrivals))
        if reference:
            theirs["round"].append(per_round(_reference_run(reference, 10, "no")[2].arrivals))
        env = {**os.environ, "GEMS_CONFIG": str(tmp / f"gems-{n}-run1.yaml"), "HF_HUB_OFFLINE": "1"}
        mine["memory"].append(timed([*GEMS, "memory", "list"], env))
        mine["skills"].append(timed([*GEMS, "skills", "list"], env))
        mine["help"].append(timed([*GEMS, "--help"], env))
    return (
        {k: statistics.median(v) for k, v in mine.items()},
        {k: statistics.median(v) for k, v in theirs.items() if v},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, help="a checkout of the authors' GEMS code")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    # Both sides run from compiled bytecode, as an installed package does (the first runs write it).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as tmp:
        gems, ref = measure(Path(tmp), args.repeat, args.reference)

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
    row("1-round run, whole process", "run1", target="<= 3x reference")
    print(f"| 1-round run, first in a new data dir (embeds the skill library once) | {gems['cold']:.3f} | - | - | |")
    row("per round (ms, first to last generator request / 9)", "round", unit=1000.0, target="<= 1.5x reference")
    row("gems memory list", "memory", target="<= 2 s")
    row("gems skills list", "skills", target="<= 2 s")
    row("gems --help", "help")


if __name__ == "__main__":
    main()
