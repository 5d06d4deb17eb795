"""What each row of the paper's tables costs per prompt, and what the efficient loop saves, on local stubs.

Table 1: every method and Fig. 4 ablation config runs the same GenEval2-shaped prompts through `gems bench` against
servers on 127.0.0.1. The scripted verifier fails each of the 3 criteria on its first check and passes it on the
second, so loop methods need exactly 2 rounds; the judge scores 3 atoms per prompt. The numbers are call counts,
which do not depend on the machine; a real verifier makes rounds vary by prompt.

Table 2: the paper's loop (`ablations/skill`) beside the efficient one (`+ ablations/efficient`) on prompts with
5 to 10 criteria (mean 7.5, as GenEval2's), each criterion passing from a round of its own (1 to 5, or never), so
rounds vary from 1 to 5 as a real run's do. The verifier answers consistently (a criterion's verdict depends only on
the attempt the image was made for), so both loops should choose the same images; the script checks it. Each MLLM
call takes `--latency` seconds (0.3 by default) on the server. Tokens are estimated server-side (4 characters a
token, 256 per image): call counts and images are exact, tokens and seconds are a model of a real server.

    python bench/method_costs.py [--prompts 8] [--latency 0.3] [--only efficient]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support, the offline server kit

from gems.configs import GemsSettings, load_settings, resolve_config_path
from gems.configs.loading import read_config_file
from gems.interfaces.benchmarks.runner import run_bench
from tests.support.servers import GeneratorStub, OpenAIStub, ScriptedMLLM, role_of, user_text

ROWS = [  # (row of the paper, method, ablation config or None)
    ("Table 1 Original / Fig. 4 (I)", "original", None),
    ("Table 1 Rewrite", "rewrite", None),
    ("Table 1 Search (N=5)", "search", None),
    ("Fig. 4 (II) + Agent Loop", "gems", "ablations/loop"),
    ("Fig. 4 (III) + Agent Memory", "gems", "ablations/memory"),
    ("Fig. 4 (IV) + Agent Skill = GEMS", "gems", "ablations/skill"),
    ("Fig. 4 right: prompt + feedback", "gems", "ablations/memory-feedback"),
    ("Fig. 4 right: + image", "gems", "ablations/memory-images"),
    ("Fig. 4 right: + image + thought", "gems", "ablations/memory-thought"),
    ("the efficient loop (beyond the paper)", "gems", "ablations/skill+ablations/efficient"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.3, help="seconds each MLLM call takes (table 2)")
    parser.add_argument("--only", choices=["rows", "efficient"], help="print one table")
    args = parser.parse_args()
    if args.only != "efficient":
        paper_rows(args)
    if args.only != "rows":
        efficient_vs_paper(args)


def paper_rows(args: argparse.Namespace) -> None:

    def judge_chat(body):
        answer = "one" if user_text(body).startswith("How many") else "Yes"
        return {"content": answer, "top_logprobs": [(answer, 0.8), ("No", 0.2)]}

    judge = OpenAIStub(chat=judge_chat).start()
    gen = GeneratorStub().start()
    print("| row | method | config | MLLM calls | generator calls | judge calls | rounds |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "geneval2_data.jsonl"
        lines = []
        for i in range(args.prompts):
            vqa = [
                [f"How many cups{i} are in the image?", "one"],
                [f"Is cup{i} red?", "Yes"],
                [f"Is it left{i}?", "Yes"],
            ]
            lines.append(json.dumps({"prompt": f"one red cup {i} on the left", "atom_count": 3, "vqa_list": vqa,
                                     "skills": ["count", "attribute", "position"]}))  # fmt: skip
        data.write_text("\n".join(lines) + "\n")
        for n, (row, method, ablation) in enumerate(ROWS):
            scripted = ScriptedMLLM(
                criteria=["Is there one cup?", "Is the cup red?", "Is it on the left?"],
                verdict_by_image=lambda q, made_from: "yes" if made_from and "refined" in made_from else "no",
                route="spatial-layout",
            )
            mllm = OpenAIStub(chat=scripted).start()
            base = GemsSettings.model_validate(
                {
                    "data_dir": tmp,
                    "mllm": {"base_url": mllm.base_url, "model": "stub", "api_key": "sk", "max_retries": 0},
                    "generator": {"backend": "http", "preset": None, "url": gen.url},
                    "judge": {"base_url": judge.base_url, "model": "judge", "api_key": "sk"},
                    "skills": {"top_k": 20},
                }
            ).model_dump(mode="python")
            for name in (ablation or "").split("+") if ablation else []:
                # The file's keys over the stub config, key by key, as `--config mine --config ablation`.
                for section, values in read_config_file(resolve_config_path(name)).items():
                    base[section] = {**base[section], **values}
                base["skills"]["top_k"] = 20
            settings = GemsSettings.model_validate(base)
            out = Path(tmp) / f"run{n}"
            summary = run_bench(data, settings, method, out, concurrency=4, progress=False)
            per = summary["cost_per_prompt"]
            mllm.stop()
            print(
                f"| {row} | {method} | {ablation or '-'} | {per['mllm_calls']:.1f} | {per['generator_calls']:.1f} | "
                f"{per['judge_calls']:.1f} | {summary['rounds_used']} |"
            )
    judge.stop()
    gen.stop()


# ---- table 2: the efficient loop beside the paper's --------------------------------------------------------------

COUNTS = [5, 6, 7, 8, 9, 10, 7, 8]  # criteria per prompt: mean 7.5 over 8 prompts, as GenEval2's
ATTEMPT = re.compile(r"\(attempt (\d+)\)$")


def pass_from(criterion: str) -> int:
    """The attempt from which a criterion passes, fixed by its text: request n's pass by attempt 1 + n % 6 (6: one
    criterion of every sixth request never passes), so requests take 1 to 5 rounds."""
    n = int(re.findall(r"request (\d+)", criterion)[0])
    return 1 + hashlib.sha256(criterion.encode()).digest()[0] % (1 + n % 6)


class ConsistentMLLM(ScriptedMLLM):
    """A verifier whose verdict depends only on the attempt an image was made for; a refiner that numbers them."""

    def __init__(self, latency: float, **kwargs: Any):
        super().__init__(verdict_by_image=self.judge, **kwargs)
        self.latency = latency

    @staticmethod
    def judge(criterion: str, made_from: str | None) -> str:
        match = ATTEMPT.search(made_from or "")
        attempt = int(match.group(1)) if match else 1
        return "yes" if attempt >= pass_from(criterion) else "no"

    def __call__(self, body: dict[str, Any]) -> Any:
        time.sleep(self.latency)  # a real server's time per call
        if role_of(body) == "decompose":
            request = user_text(body).rsplit("\n", 1)[-1]
            n = int(request.split("#")[1])
            return json.dumps([f"Is part {i} of request {n} right?" for i in range(COUNTS[n % len(COUNTS)])])
        answer = super().__call__(body)
        if role_of(body) == "refine":  # the next attempt of the request, numbered
            text = user_text(body)
            request = text.split("\n", 2)[1]
            attempt = text.count("## Attempt") + 1
            lesson = "LESSON: keep what passed\nPROMPT: " if "LESSON:" in json.dumps(body["messages"][0]) else ""
            return {"content": f"{lesson}{request} (attempt {attempt})"}
        return answer


def _estimated_tokens(requests: list[dict[str, Any]]) -> tuple[float, int]:
    chars, images = 0, 0
    for request in requests:
        for message in request["body"].get("messages", []):
            content = message.get("content")
            parts = [content] if isinstance(content, str) else content or []
            for part in parts:
                if isinstance(part, str):
                    chars += len(part)
                elif part.get("type") == "text":
                    chars += len(part.get("text", ""))
                elif part.get("type") == "image_url":
                    images += 1
    return chars / 4 + 256 * images, images


def efficient_vs_paper(args: argparse.Namespace) -> None:
    gen = GeneratorStub().start()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("\n".join(f"a scene #{n}# with many parts" for n in range(args.prompts)) + "\n")
        for label, extra in (("paper", None), ("efficient", "ablations/efficient")):
            scripted = ConsistentMLLM(args.latency)
            mllm = OpenAIStub(chat=scripted).start()
            base = GemsSettings.model_validate({
                "data_dir": tmp,
                "mllm": {"base_url": mllm.base_url, "model": "stub", "api_key": "sk", "max_retries": 0},
                "generator": {"backend": "http", "preset": None, "url": gen.url},
                "memory": {"mode": "experience", "lessons": False}, "skills": {"enabled": True, "max_active": 1},
                "loop": {"seed": 1},  # the memory and skills of ablations/skill: the paper's whole loop
            }).model_dump(mode="python")  # fmt: skip
            if extra:
                overlay = load_settings(extra, env={}).model_dump(mode="python")
                base["loop"] = {**base["loop"], "verify": overlay["loop"]["verify"],
                                "compress": overlay["loop"]["compress"]}  # fmt: skip
                base["memory"] = {**base["memory"], "image_window": overlay["memory"]["image_window"]}
            out = Path(tmp) / label
            started_gen = len(gen.prompts)
            summary = run_bench(prompts, GemsSettings.model_validate(base), "gems", out, concurrency=args.prompts,
                                scorer="verifier", progress=False)  # fmt: skip
            records = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
            tokens_in, images = _estimated_tokens(mllm.requests)
            rounds = sum(len(r["rounds"]) for r in records)
            results[label] = {
                "calls": len(mllm.requests) / len(records),
                "tokens_in": tokens_in / len(records),
                "images": images / len(records),
                "generator": (len(gen.prompts) - started_gen) / len(records),
                "wall": sum(r["cost"]["wall_s"] for r in records) / len(records),
                "wall_round": sum(r["cost"]["wall_s"] for r in records) / rounds,
                "rounds": rounds / len(records),
                "choices": [(r["final"]["round"], r["final"]["passed"]) for r in records],
                "summary": summary,
            }
            mllm.stop()
    gen.stop()
    paper, lean = results["paper"], results["efficient"]
    print(f"\nper prompt, {args.prompts} prompts, {sum(COUNTS) / len(COUNTS):.1f} criteria on average, "
          f"{args.latency:g} s per MLLM call")  # fmt: skip
    print("| loop | MLLM calls | input tokens (est.) | images to the MLLM | generator calls | rounds | wall s | "
          "wall s per round |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for label, row in results.items():
        print(f"| {label} | {row['calls']:.1f} | {row['tokens_in']:.0f} | {row['images']:.1f} | {row['generator']:.1f} "
              f"| {row['rounds']:.1f} | {row['wall']:.2f} | {row['wall_round']:.2f} |")  # fmt: skip
    calls_cut = 1 - lean["calls"] / paper["calls"]
    images_cut = 1 - lean["images"] / paper["images"]
    same = lean["choices"] == paper["choices"]
    print(f"\nefficient vs paper: {100 * calls_cut:.0f}% fewer MLLM calls (goal >= 65%), {100 * images_cut:.0f}% fewer "
          f"images sent (goal >= 75%), wall per round {lean['wall_round'] / paper['wall_round']:.2f}x (goal < 1), "
          f"same final choices: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
