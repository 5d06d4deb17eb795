"""Does `gems bench` print GenEval2's own numbers? Its summary against the official formulas on the same answers.

A GenEval2-shaped prompt file (800 prompts, 100 per atom count 3-10, the official skills and "How many" answers;
made up here, since the real file is CC BY-NC: pass `--data geneval2_data.jsonl` to use yours) runs through
`gems bench --method original` against local servers on 127.0.0.1: a generator stub and a judge that answers every
question with a fixed next-token distribution (drawn from the question's hash, with the traps the official code
handles its own way: `YES`, `Yes.`, whole `10` tokens, tiny probabilities, lone spaces before digits). Then the
official `evaluation.py` + `soft_tifa_analysis.py` arithmetic is applied to the same distributions, and the two
are printed side by side.

    python bench/geneval2_official.py [--data FILE] [--prompts 800] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support, the offline server kit

from gems.configs import GemsSettings
from gems.interfaces.benchmarks.runner import run_bench
from tests.support.official import NUMBERS as DIGITS
from tests.support.official import official_soft_tifa
from tests.support.servers import GeneratorStub, OpenAIStub, user_text

NUMBERS = list(DIGITS)
OBJECTS = ["apple", "cup", "dog", "kite", "book", "chair", "bird", "clock", "lamp", "boat", "vase", "shoe"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "white"]


def synthetic_geneval2(n: int, seed: int = 0) -> list[dict]:
    """GenEval2-shaped records: `prompt`, `atom_count`, `vqa_list`, one skill per atom; sorted by atom count."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        atoms = 3 + i * 8 // n
        vqa, skills = [], []
        for k in range(atoms):
            obj = rng.choice(OBJECTS)
            kind = rng.choice(["object", "count", "attribute", "attribute", "position", "verb"])
            if kind == "count":
                vqa.append([f"How many {obj}s are in the image?", rng.choice(NUMBERS[:7])])
            elif kind == "attribute":
                vqa.append([f"Is the {obj} {rng.choice(COLOURS)}?", "Yes"])
            elif kind == "position":
                vqa.append([f"Is the {obj} left of the {rng.choice(OBJECTS)}?", "Yes"])
            elif kind == "verb":
                vqa.append([f"Is the {obj} moving?", "Yes"])
            else:
                vqa.append([f"Are there any {obj}s in the image? ({k})", "Yes"])
            skills.append(kind)
        records.append({"prompt": f"prompt {i}: " + ", ".join(q for q, _ in vqa), "atom_count": atoms,
                        "vqa_list": vqa, "skills": skills})  # fmt: skip
    return records


def distribution(question: str) -> dict[str, float]:
    """A fixed next-token distribution for a question, with the tokens the official code treats specially."""
    rng = random.Random(hashlib.sha256(question.encode()).digest())
    tokens = ["Yes", " yes", "yes", "YES", "Yes.", "No", "no", " ", "1", "2", "3", "10", "two", "one", " Two"]
    weights = [rng.random() ** 3 for _ in tokens]
    if rng.random() < 0.1:  # sometimes the right answer is nearly impossible: the GM must not round it to 0
        weights = [w if t in ("No", "no") else w * 1e-9 for t, w in zip(tokens, weights, strict=True)]
    total = sum(weights)
    return {t: w / total for t, w in zip(tokens, weights, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a GenEval2 geneval2_data.jsonl (default: a synthetic file of that shape)")
    parser.add_argument("--prompts", type=int, default=800)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    def judge_chat(body):
        dist = distribution(user_text(body).removesuffix(" Answer in one word."))
        top = sorted(dist.items(), key=lambda kv: -kv[1])
        return {"content": top[0][0], "top_logprobs": top}

    judge = OpenAIStub(chat=judge_chat).start()
    gen = GeneratorStub().start()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "geneval2_data.jsonl"
        if not args.data:
            data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_geneval2(args.prompts)))
        records = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
        settings = GemsSettings.model_validate(
            {
                "data_dir": tmp,
                "mllm": {"base_url": judge.base_url, "model": "unused", "api_key": "sk"},
                "generator": {"backend": "http", "preset": None, "url": gen.url},
                "judge": {"base_url": judge.base_url, "model": "judge", "api_key": "sk", "max_retries": 0},
            }
        )
        started = time.perf_counter()
        summary = run_bench(data, settings, "original", Path(tmp) / "out", concurrency=args.concurrency)
        wall = time.perf_counter() - started
    judge.stop()
    gen.stop()
    want = official_soft_tifa(records, distribution)
    got = summary["scores"] or {}
    print(f"{len(records)} prompts, {summary['cost_total']['judge_calls']:.0f} judge calls, {wall:.1f}s")
    print(f"{'':14}{'gems bench':>14}{'official':>14}{'|diff|':>10}")
    worst = 0.0
    for key in ("soft_tifa_gm", "soft_tifa_am"):
        diff = abs(got.get(key, float("nan")) - want[key])
        worst = max(worst, diff)
        print(f"{key:14}{got.get(key, float('nan')):14.9f}{want[key]:14.9f}{diff:10.1e}")
    print("equal to 1e-9" if worst <= 1e-9 else "DIFFERENT", "(0-100 scale)")


if __name__ == "__main__":
    main()
