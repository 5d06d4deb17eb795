"""What each row of the paper's tables costs per prompt: MLLM, generator and judge calls, on local stubs.

Every method and Fig. 4 ablation config runs the same GenEval2-shaped prompts through `gems bench` against
servers on 127.0.0.1. The scripted verifier fails each of the 3 criteria on its first check and passes it on the
second, so loop methods need exactly 2 rounds; the judge scores 3 atoms per prompt. The numbers are call counts,
which do not depend on the machine; a real verifier makes rounds vary by prompt.

    python bench/method_costs.py [--prompts 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support, the offline server kit

from gems.configs import GemsSettings, load_settings
from gems.interfaces.benchmarks.runner import run_bench
from tests.support.servers import GeneratorStub, OpenAIStub, ScriptedMLLM, user_text

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
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()

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
            if ablation:  # the ablation file's sections over the stub config, as `--config mine --config ablation`
                overlay = load_settings(ablation, env={}).model_dump(mode="python")
                base["memory"], base["skills"] = overlay["memory"], {**overlay["skills"], "top_k": 20}
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


if __name__ == "__main__":
    main()
