"""`gems bench`: prompt-set formats, methods, Soft-TIFA scoring, resumability and reports (tiny fixtures only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gems.configs import load_settings
from gems.graph.bench.datasets import DatasetError, load_prompts
from gems.graph.bench.runner import run_bench
from gems.graph.bench.scoring import answer_probability, geometric_mean, judge_warning
from tests.conftest import make_settings
from tests.support.net import write_stub_config
from tests.support.servers import OpenAIStub, user_text

DATA = Path(__file__).parent / "data" / "bench"
CRITERIA = ["Is the main object there?", "Are the colours right?"]


def test_prompt_set_formats():
    fmt, items = load_prompts(DATA / "geneval2_data.jsonl")
    assert fmt == "geneval2" and len(items) == 3 and items[0].id == "00000"
    assert items[0].atoms[1] == ("How many apples are there?", "2")
    assert items[0].categories == ["count", "color", "atoms=3"]
    fmt, items = load_prompts(DATA / "evaluation_metadata.jsonl")
    assert (
        fmt == "geneval" and items[1].categories == ["two_object"] and items[1].prompt == "a photo of a cup and a book"
    )
    fmt, items = load_prompts(DATA / "dpg")
    assert fmt == "dpg" and [i.id for i in items] == ["desk", "harbour"]
    fmt, items = load_prompts(DATA / "prompts.txt")
    assert fmt == "text" and [i.prompt for i in items] == ["a red cube", "a blue sphere"]
    fmt, items = load_prompts(DATA / "prompts.jsonl")
    assert fmt == "jsonl" and items[0].id == "p1" and items[0].categories == ["color"] and items[1].id == "00001"


def test_bad_prompt_files(tmp_path):
    with pytest.raises(DatasetError, match="no such prompt file"):
        load_prompts(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl line 2 is not JSON"):
        load_prompts(bad)


def test_soft_tifa_arithmetic():
    top = [
        {"token": "Yes", "logprob": -0.1053605},
        {"token": " yes", "logprob": -3.0},
        {"token": "No", "logprob": -2.5},
    ]
    assert answer_probability(top, "yes") == pytest.approx(0.9 + 0.0497871, abs=1e-4)
    assert answer_probability([{"token": "two", "logprob": -0.2231436}], "2") == pytest.approx(0.8, abs=1e-6)
    assert geometric_mean([0.9, 0.5]) == pytest.approx(0.6708204) and geometric_mean([0.9, 0.0]) == 0.0


def judge_server(prob_by_question: dict[str, float]) -> OpenAIStub:
    """A VQA judge answering with logprobs: the expected answer gets the scripted probability."""

    def chat(body):
        question = user_text(body)
        p = prob_by_question.get(question, 0.5)
        answer = "2" if question.startswith("How many") else "Yes"
        return {"content": answer, "top_logprobs": [(answer, p), ("No", 1 - p)]}

    return OpenAIStub(chat=chat).start()


def test_gems_bench_scores_reports_and_costs(mllm_server, gen_server, isolated_env, tmp_path):
    mllm, _ = mllm_server(criteria=CRITERIA, verdict=lambda q, n: "yes" if n >= 2 else "no")
    gen = gen_server()
    judge = judge_server({"Are there apples?": 0.9, "How many apples are there?": 0.5})
    try:
        settings = make_settings(
            mllm, gen, isolated_env, skills={"top_k": 20},
            judge={"base_url": judge.base_url, "model": "judge-vlm", "api_key": "sk-j", "max_retries": 0},
        )  # fmt: skip
        summary = run_bench(DATA / "geneval2_data.jsonl", settings, "gems", tmp_path / "out", concurrency=2)
    finally:
        judge.stop()
    assert summary["finished"] == 3 and summary["errors"] == [] and summary["scorer"] == "soft-tifa"
    results = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out" / "results").glob("*.json")}
    first = results["00000"]["score"]
    assert first["gm"] == pytest.approx((0.9 * 0.5 * 0.5) ** (1 / 3), abs=1e-4)
    assert first["am"] == pytest.approx((0.9 + 0.5 + 0.5) / 3, abs=1e-4)
    assert summary["by_category"]["count"]["n"] == 1 and summary["by_category"]["color"]["n"] == 2
    # The criteria each pass on their 2nd attempt: the 3 prompts race, but every prompt succeeds.
    assert summary["success_rate"] == 1.0 and len(summary["round_pass_rate"]) == 5
    assert summary["round_pass_rate"][-1] == 1.0
    cost = summary["cost_total"]
    assert cost["generator_calls"] == len(gen.prompts) and cost["mllm_calls"] > 0 and cost["image_parts"] > 0
    assert cost["generator_busy_s"] > 0 and summary["cost_per_prompt"]["wall_s"] > 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| pass rate |" in report and "| count |" in report and "generator_busy_s" in report
    gallery = (tmp_path / "out" / "report.html").read_text()
    assert gallery.count("<img") == sum(len(r["rounds"]) for r in results.values()) and "✓" in gallery
    assert "Criteria pass rate by round: " in gallery and " MLLM calls (" in gallery and '{"mllm_calls"' not in gallery
    for record in results.values():
        for r in record["rounds"]:
            assert (tmp_path / "out" / "images" / f"{r['image']['sha256']}.png").exists()


@pytest.mark.parametrize(
    ("method", "generator_calls", "roles"),
    [
        ("original", 1, {}),
        ("rewrite", 1, {"rewrite": 1}),
        ("search", 3, {"decompose": 1, "verify": 6}),
        ("loop", 2, {"decompose": 1, "verify": 4, "refine": 1}),
    ],
)
def test_baseline_methods(mllm_server, gen_server, isolated_env, tmp_path, method, generator_calls, roles):
    mllm, script = mllm_server(criteria=CRITERIA, verdict=lambda q, n: "yes" if n >= 2 else "no")
    gen = gen_server()
    settings = make_settings(mllm, gen, isolated_env, skills={"top_k": 20})
    summary = run_bench(DATA / "prompts.txt", settings, method, tmp_path / "out", limit=1, search_n=3, concurrency=1)
    assert summary["finished"] == 1 and len(gen.prompts) == generator_calls
    assert {k: v for k, v in script.calls.items() if v} == roles
    if method == "rewrite":
        assert gen.prompts == ["rewritten: a red cube"]
    if method == "loop":
        assert "Lesson from this attempt" not in str(script.bodies["refine"][0])  # loop only: no memory layers
    if method == "search":
        record = json.loads((tmp_path / "out" / "results" / "00000.json").read_text())
        assert len(record["rounds"]) == 1 and record["cost"]["generator_calls"] == 3


def test_rerun_skips_finished_prompts(mllm_server, gen_server, isolated_env, tmp_path):
    mllm, _ = mllm_server(criteria=CRITERIA)
    gen = gen_server()
    settings = make_settings(mllm, gen, isolated_env, skills={"top_k": 20})
    out = tmp_path / "out"
    assert run_bench(DATA / "dpg", settings, "gems", out, limit=1)["finished"] == 1
    assert len(gen.prompts) == 1
    assert run_bench(DATA / "dpg", settings, "gems", out)["finished"] == 2
    assert len(gen.prompts) == 2
    run_bench(DATA / "dpg", settings, "gems", out)
    assert len(gen.prompts) == 2


@pytest.mark.slow
def test_killed_bench_loses_only_what_was_in_flight(mllm_server, gen_server, tmp_path):
    mllm, script = mllm_server(criteria=CRITERIA, verdict=lambda q, n: "yes" if n % 2 == 0 else "no")
    gen = gen_server(block_on_call=3)  # prompt 1 takes calls 1-2; prompt 2 blocks in its first round
    cfg = write_stub_config(tmp_path / "c.yaml", mllm.base_url, gen.url, data_dir=str(tmp_path / "data"))
    args = [sys.executable, "-m", "gems.graph.cli", "bench", str(DATA / "prompts.txt"), "--config", str(cfg)]
    args += ["--out", str(tmp_path / "out"), "--concurrency", "1", "--quiet", "--scorer", "verifier"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE)
    try:
        assert gen.blocked.wait(90)
        proc.kill()
    finally:
        proc.wait(30)
    assert [p.name for p in (tmp_path / "out" / "results").glob("*.json")] == ["00000.json"]
    decompositions = script.calls["decompose"]
    gen.block_on_call = None
    gen.release.set()
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "text: 2/2 prompts" in result.stdout.replace("gems on ", "")
    assert script.calls["decompose"] == decompositions  # prompt 2 continued from its checkpoint
    assert gen.prompts.count("a red cube") == 1  # prompt 1 was not run again


def test_judge_warning_and_ablation_configs(tmp_path):
    settings = load_settings(env={})
    assert judge_warning(settings) is None
    same = settings.model_copy(update={"judge": settings.mllm})
    assert "also the loop's verifier" in judge_warning(same)
    rows = {
        "loop": ("last", False),
        "memory": ("experience", False),
        "skill": ("experience", True),
        "memory-feedback": ("feedback", False),
        "memory-images": ("images", False),
        "memory-thought": ("thought", False),
        "memory-experience": ("experience", False),
    }
    for name, (mode, skills) in rows.items():
        merged = load_settings(["cpu", f"ablations/{name}"], env={})
        assert (merged.memory.mode, merged.skills.enabled, merged.memory.lessons) == (mode, skills, False)
        assert merged.generator.preset == "sd-turbo"  # the endpoints come from the first file


def test_bench_cli_errors(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gems.graph.cli", "bench", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "gems: error: no such prompt file or folder" in result.stderr
