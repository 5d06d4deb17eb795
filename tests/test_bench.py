"""`gems bench`: prompt-set formats, methods, Soft-TIFA scoring, resumability and reports (tiny fixtures only)."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gems.configs import load_settings
from gems.interfaces.benchmarks.datasets import DatasetError, load_prompts
from gems.interfaces.benchmarks.runner import run_bench
from gems.interfaces.benchmarks.scoring import judge_warning
from tests.conftest import make_settings
from tests.support.net import write_stub_config
from tests.support.official import official_images, official_soft_tifa, qwen_like_first_token
from tests.support.servers import OpenAIStub, user_text

DATA = Path(__file__).parent / "data" / "bench"
CRITERIA = ["Is the main object there?", "Are the colours right?"]


def test_prompt_set_formats():
    fmt, items = load_prompts(DATA / "geneval2_data.jsonl")
    assert fmt == "geneval2" and len(items) == 4 and items[0].id == "00000"
    assert items[0].atoms[0] == ("How many apples are in the image?", "two")
    assert items[0].categories == ["count", "attribute"]
    line = (DATA / "geneval2_data.jsonl").read_text().splitlines()[0]
    assert items[0].meta == {"skills": ["count", "attribute", "attribute"], "atom_count": 3, "line": line}
    fmt, items = load_prompts(DATA / "evaluation_metadata.jsonl")
    assert (
        fmt == "geneval" and items[1].categories == ["two_object"] and items[1].prompt == "a photo of a cup and a book"
    )
    assert items[1].meta["record"]["include"][1] == {"class": "book", "count": 1}
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


def judge_server(prob_by_question: dict[str, float]) -> OpenAIStub:
    """A VQA judge answering with logprobs: the expected answer gets the scripted probability."""

    def chat(body):
        question = user_text(body).removesuffix(" Answer in one word.")
        p = prob_by_question.get(question, 0.5)
        answer = "two" if question.startswith("How many") else "Yes"
        return {"content": answer, "top_logprobs": [(answer, p), ("No", 1 - p)]}

    return OpenAIStub(chat=chat).start()


def test_gems_bench_scores_reports_and_costs(mllm_server, gen_server, isolated_env, tmp_path):
    mllm, _ = mllm_server(criteria=CRITERIA, verdict=lambda q, n: "yes" if n >= 2 else "no")
    gen = gen_server()
    judge = judge_server({"Are the apples red?": 0.9, "How many apples are in the image?": 0.5})
    try:
        settings = make_settings(
            mllm, gen, isolated_env, skills={"top_k": 20},
            judge={"base_url": judge.base_url, "model": "judge-vlm", "api_key": "sk-j", "max_retries": 0},
        )  # fmt: skip
        summary = run_bench(DATA / "geneval2_data.jsonl", settings, "gems", tmp_path / "out", concurrency=2, first=3)
    finally:
        judge.stop()
    assert summary["finished"] == 3 and summary["errors"] == [] and summary["scorer"] == "soft-tifa"
    results = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out" / "results").glob("*.json")}
    first = results["00000"]["score"]
    assert first["gm"] == pytest.approx((0.9 * 0.5 * 0.5) ** (1 / 3), abs=1e-4)
    assert first["am"] == pytest.approx((0.9 + 0.5 + 0.5) / 3, abs=1e-4)
    assert summary["by_skill"]["count"]["atoms"] == 1 and summary["by_skill"]["attribute"]["atoms"] == 4
    assert list(summary["by_atom_count"]) == ["3", "4"] and summary["by_atom_count"]["3"]["prompts"] == 2
    # The criteria each pass on their 2nd attempt: the 3 prompts race, but every prompt succeeds.
    check = summary["self_check"]
    assert check["success_rate"] == 1.0 and len(check["round_pass_rate"]) == 5 and check["round_pass_rate"][-1] == 1.0
    cost = summary["cost_total"]
    assert cost["judge_calls"] == 3 + 4 + 3  # one call per atom (the start-up probe is not a prompt's cost)
    assert cost["generator_calls"] == len(gen.prompts) and cost["mllm_calls"] > 0 and cost["image_parts"] > 0
    assert cost["generator_busy_s"] > 0 and summary["cost_per_prompt"]["wall_s"] > 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| pass rate |" in report and "| count |" in report and "generator_busy_s" in report
    assert "Soft-TIFA (GenEval2's official metric): soft_tifa_gm" in report and "judge_calls" in report
    assert "- judge: judge-vlm at http" in report and "only the top-20 logprobs" in report  # the endpoint's limit
    gallery = (tmp_path / "out" / "report.html").read_text()
    assert gallery.count("<img") == sum(len(r["rounds"]) for r in results.values()) and "✓" in gallery
    assert "Criteria pass rate by round (self-check" in gallery and " MLLM calls (" in gallery
    assert "<h2>Soft-TIFA GM per atom count</h2>" in gallery and '{"mllm_calls"' not in gallery
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
def test_baseline_methods(stubs, tmp_path, method, generator_calls, roles):
    s = stubs(criteria=CRITERIA, verdict=lambda q, n: "yes" if n >= 2 else "no")
    settings = s.settings(skills={"top_k": 20})
    summary = run_bench(DATA / "prompts.txt", settings, method, tmp_path / "out", first=1, search_n=3, concurrency=1)
    assert summary["finished"] == 1 and len(s.gen.prompts) == generator_calls
    assert {k: v for k, v in s.script.calls.items() if v} == roles
    if method == "rewrite":
        assert s.gen.prompts == ["rewritten: a red cube"]
    if method == "loop":
        assert "Lesson from this attempt" not in str(s.script.bodies["refine"][0])  # loop only: no memory layers
    if method == "search":
        record = json.loads((tmp_path / "out" / "results" / "00000.json").read_text())
        assert len(record["rounds"]) == 1 and record["cost"]["generator_calls"] == 3


def test_rerun_skips_finished_prompts(stubs, tmp_path):
    s = stubs(criteria=CRITERIA)
    settings = s.settings(skills={"top_k": 20})
    out = tmp_path / "out"
    assert run_bench(DATA / "dpg", settings, "gems", out)["finished"] == 2
    assert len(s.gen.prompts) == 2
    run_bench(DATA / "dpg", settings, "gems", out)
    assert len(s.gen.prompts) == 2
    # A result file lost after its run finished: rebuilt from the run's checkpoint, nothing generated again.
    (out / "results" / "harbour.json").unlink()
    assert run_bench(DATA / "dpg", settings, "gems", out)["finished"] == 2
    assert len(s.gen.prompts) == 2 and (out / "results" / "harbour.json").is_file()


@pytest.mark.slow
def test_killed_bench_loses_nothing(mllm_server, gen_server, tmp_path):
    # Kill 1: prompt 2 is generating (prompt 1 finished). Kill 2: prompt 3 is decomposing (prompt 2 finished on
    # resume). Then the bench finishes: every prompt has its image, only the generation in flight was redone.
    mllm, script = mllm_server(criteria=CRITERIA, block_at=("decompose", 3))
    gen = gen_server(block_on_call=2)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("p one\np two\np three\n")
    cfg = write_stub_config(tmp_path / "c.yaml", mllm.base_url, gen.url, data_dir=str(tmp_path / "data"))
    args = [sys.executable, "-m", "gems.interfaces.cli", "bench", str(prompts), "--config", str(cfg)]
    args += ["--out", str(tmp_path / "out"), "--concurrency", "1", "--quiet", "--scorer", "verifier"]
    results = tmp_path / "out" / "results"
    for blocked in (gen.blocked, script.blocked):
        proc = subprocess.Popen(args, stderr=subprocess.PIPE)
        try:
            assert blocked.wait(90)
            proc.kill()
        finally:
            proc.wait(30)
        gen.block_on_call = None
        gen.release.set()
    assert sorted(p.name for p in results.glob("*.json")) == ["00000.json", "00001.json"]
    script.block_at = None
    script.release.set()
    # Rerun after the kills with another file or selection: refused in one line, nothing touched.
    kept = {p.name: p.read_bytes() for p in results.glob("*.json")}
    text = prompts.read_text()
    prompts.write_text(text + "p four\n")
    refused = subprocess.run(args, capture_output=True, text=True, timeout=120)
    prompts.write_text(text)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("gems: error: ") and "prompts.txt, changed since" in refused.stderr
    refused = subprocess.run([*args, "--first", "2"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "holds a run of all prompts, not --first 2; use --force-new" in refused.stderr
    assert {p.name: p.read_bytes() for p in results.glob("*.json")} == kept
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert gen.prompts.count("p one") == 1 and gen.prompts.count("p three") == 1
    assert gen.prompts.count("p two") == 2  # the generation in flight at the first kill, and no other repeat
    assert script.calls["decompose"] == 4  # one per prompt, plus the one in flight at the second kill
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    files = sorted(results.glob("*.json"))
    assert summary["finished"] == summary["prompts"] == summary["scored"] == len(files) == 3
    for path in files:
        assert Path(json.loads(path.read_text())["final"]["image"]["path"]).is_file()
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert len(run["resumed_at"]) == 2 and run["finished_at"]
    # Wall time counts every session: the two killed ones (recorded as they ran) and the last.
    sessions = run["sessions"]
    assert len(sessions) == 3 and [s["finished_at"] is None for s in sessions] == [True, True, False]
    assert all(s["wall_s"] > 0 for s in sessions)
    assert run["wall_s"] == pytest.approx(sum(s["wall_s"] for s in sessions), abs=1e-3) == summary["wall_s"]


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
    args = [sys.executable, "-m", "gems.interfaces.cli", "bench", str(tmp_path / "missing.txt")]
    result = subprocess.run([*args, "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2 and "gems: error: no such prompt file or folder" in result.stderr


def test_selection_sizes_must_be_positive(tmp_path, capsys):
    from gems.interfaces.cli import main

    out = tmp_path / "out"
    for flag, value in [("--first", "-3"), ("--first", "0"), ("--limit", "0"), ("--limit", "-1"),
                        ("--images-per-prompt", "0")]:  # fmt: skip
        assert main(["bench", str(DATA / "prompts.txt"), "--out", str(out), flag, value]) == 2
        err = capsys.readouterr().err
        assert err == f"gems: error: {flag} must be 1 or more, not {value}\n"
    assert not out.exists()  # refused before anything was written


# ---- the benchmarks' own numbers ----

# Full next-token distributions per question (every token the judge could emit; they sum to 1).
DISTRIBUTIONS = {
    # "two": the official sums two, Two, " two", " Two", "2" and the first token of " 2" (a lone space).
    "How many apples are in the image?": {"two": 0.5, " two": 0.1, "2": 0.2, " ": 0.05, "three": 0.15},
    # YES and "Yes." are not in the official list: only "Yes" counts here.
    "Are the apples red?": {"YES": 0.6, "Yes.": 0.3, "Yes": 0.1},
    # A tiny probability must survive (no rounding): the prompt's GM is small, not 0.
    "Is the plate blue?": {"No": 1 - 1e-8, "Yes": 1e-8},
    # "ten": the first token of "10" is "1"; a whole "10" token is ignored, as the official does.
    "How many cups are in the image?": {"1": 0.4, "ten": 0.3, "10": 0.2, "No": 0.1},
    "How many books are in the image?": {"one": 0.6, "1": 0.3, "One": 0.1},
    "Is the cat sleeping?": {"No": 1.0},  # an atom at 0 zeroes its prompt's GM
}
DEFAULT_DISTRIBUTION = {"Yes": 0.7, " yes": 0.1, "yes": 0.05, "No": 0.15}


def distribution_judge() -> OpenAIStub:
    def chat(body):
        question = user_text(body).removesuffix(" Answer in one word.")
        dist = DISTRIBUTIONS.get(question, DEFAULT_DISTRIBUTION)
        top = sorted(dist.items(), key=lambda kv: -kv[1])
        return {"content": top[0][0], "top_logprobs": [(t, p) for t, p in top if p > 0] or [("No", 1.0)]}

    return OpenAIStub(chat=chat).start()


def test_first_tokens_are_the_official_judges(stubs, tmp_path):
    from gems.interfaces.benchmarks.first_tokens import QWEN3_VL_FIRST_TOKENS as TABLE
    from gems.interfaces.benchmarks.scoring import ScorerError, answer_strings, qwen_first_token

    # Every answer string evaluation.py builds for GenEval2's yes/no and count (one..ten and beyond) questions.
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
    for expected in ("Yes", *words):
        for answer in answer_strings("How many cups are in the image?" if expected != "Yes" else "Is it?", expected):
            assert qwen_first_token(answer) == qwen_like_first_token(answer), answer
    # Pieces, not words: Qwen2's BPE has no whole "eleven" or "twelve" (the pre-tokenizer rule said it had).
    assert TABLE["eleven"] == (10068, "ele") and TABLE["twelve"] == (15560, "tw")
    assert TABLE[" eleven"] == (44214, " eleven") and TABLE["Twelve"] == (22816, "Tw")
    # Ids Qwen2's vocabulary is known by (byte-level BPE: a space is Ġ, id 220; digits one by one).
    assert [TABLE[a][0] for a in ("Yes", " yes", " 2", "10", "1")] == [9454, 9834, 220, 16, 16]

    # End to end: "eleven" credits the judge's "ele" token, as evaluation.py's encode(answer)[0] does.
    data = tmp_path / "geneval2_data.jsonl"
    record = {"prompt": "eleven cups", "atom_count": 1, "skills": ["count"],
              "vqa_list": [["How many cups are in the image?", "eleven"]]}  # fmt: skip
    data.write_text(json.dumps(record) + "\n")
    dist = {"ele": 0.5, "eleven": 0.2, " eleven": 0.1, "No": 0.2}

    def chat(body):
        return {"content": "ele", "top_logprobs": sorted(dist.items(), key=lambda kv: -kv[1])}

    s = stubs()
    judge = OpenAIStub(chat=chat).start()
    try:
        settings = s.settings(judge={"base_url": judge.base_url, "model": "j"})
        summary = run_bench(data, settings, "original", tmp_path / "out")
        # "eleven" and "Eleven"... : ele (0.5) + " eleven" (0.1); "other" and " other" are not in the top-k.
        assert summary["scores"]["soft_tifa_am"] == pytest.approx(60.0)
        assert summary["scores"]["soft_tifa_am"] == pytest.approx(
            official_soft_tifa([record], lambda q: dist)["soft_tifa_am"]
        )
        record["vqa_list"][0][1] = "a dozen"  # no table entry: refused before the first prompt
        data.write_text(json.dumps(record) + "\n")
        with pytest.raises(
            ScorerError,
            match="prompt 00000's answer 'a dozen' has no entry in gems' table of the official judge's first tokens",
        ):
            run_bench(data, settings, "original", tmp_path / "dozen")
    finally:
        judge.stop()


def test_soft_tifa_equals_the_official_formulas(stubs, tmp_path):
    s = stubs()
    judge = distribution_judge()
    try:
        settings = s.settings(judge={"base_url": judge.base_url, "model": "j"})
        summary = run_bench(DATA / "geneval2_data.jsonl", settings, "original", tmp_path / "out", concurrency=2)
    finally:
        judge.stop()
    records = [json.loads(line) for line in (DATA / "geneval2_data.jsonl").read_text().splitlines()]
    official = official_soft_tifa(records, lambda q: DISTRIBUTIONS.get(q, DEFAULT_DISTRIBUTION))
    assert summary["scorer"] == "soft-tifa" and summary["metric"] == "Soft-TIFA (GenEval2's official metric)"
    assert summary["scores"]["soft_tifa_gm"] == pytest.approx(official["soft_tifa_gm"], abs=1e-9)
    assert summary["scores"]["soft_tifa_am"] == pytest.approx(official["soft_tifa_am"], abs=1e-9)
    assert {k: v["soft_tifa_am"] for k, v in summary["by_skill"].items()} == pytest.approx(
        official["by_skill"], abs=1e-9
    )
    assert list(summary["by_skill"]) == ["object", "attribute", "count", "position", "verb"]
    assert summary["by_skill"]["count"]["atoms"] == 3 and summary["by_skill"]["object"]["atoms"] == 4
    assert list(summary["by_atom_count"]) == ["3", "4", "10"]  # numeric order
    assert {k: v["soft_tifa_gm"] for k, v in summary["by_atom_count"].items()} == pytest.approx(
        official["by_atom_count"]
    )
    # The request is evaluation.py's: one user turn, the image first, then the question; one token, logprobs.
    body = judge.requests[-1]["body"]
    assert [m["role"] for m in body["messages"]] == ["user"]
    content = body["messages"][0]["content"]
    assert [p["type"] for p in content] == ["image_url", "text"] and content[1]["text"].endswith(" Answer in one word.")
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_completion_tokens"] == 1
    # The image goes as the file is, not downscaled.
    result = json.loads((tmp_path / "out" / "results" / "00000.json").read_text())
    assert 0 < result["score"]["gm"] < 1e-2 and result["score"]["atoms"][2]["p"] == pytest.approx(1e-8)  # not rounded
    sent = content[0]["image_url"]["url"].split(",", 1)[1]
    finals = [json.loads(p.read_text())["final"]["image"]["path"] for p in (tmp_path / "out" / "results").iterdir()]
    assert sent in {base64.b64encode(Path(path).read_bytes()).decode() for path in finals}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Soft-TIFA AM per skill (over atoms)" in report and "| 10 |" in report


def test_scorer_refusals_happen_before_the_first_prompt(stubs, tmp_path):
    from gems.interfaces.benchmarks.scoring import ScorerError

    s = stubs(criteria=CRITERIA)
    settings = s.settings(skills={"top_k": 20})
    with pytest.raises(ScorerError, match="needs a judge"):
        run_bench(DATA / "geneval2_data.jsonl", settings, "gems", tmp_path / "a")
    with pytest.raises(ScorerError, match="needs \\[question, answer\\] atoms"):
        run_bench(DATA / "prompts.txt", settings.model_copy(update={"judge": settings.mllm}), "gems", tmp_path / "b",
                  scorer="soft-tifa")  # fmt: skip
    with pytest.raises(ScorerError, match="method 'original' has none"):
        run_bench(DATA / "prompts.txt", settings, "original", tmp_path / "c", scorer="verifier")
    no_logprobs = OpenAIStub(chat=lambda body: "Yes").start()
    try:
        judged = s.settings(judge={"base_url": no_logprobs.base_url, "model": "j"})
        with pytest.raises(ScorerError, match="returned no logprobs"):
            run_bench(DATA / "geneval2_data.jsonl", judged, "original", tmp_path / "d")
    finally:
        no_logprobs.stop()
    assert s.gen.prompts == []  # nothing was generated for any of them


def test_self_check_is_labelled_everywhere(mllm_server, gen_server, isolated_env, tmp_path, capsys):
    from gems.interfaces.cli import main

    mllm, _ = mllm_server(criteria=CRITERIA)
    gen = gen_server()
    cfg = write_stub_config(tmp_path / "c.yaml", mllm.base_url, gen.url, data_dir=str(isolated_env))
    args = ["bench", str(DATA / "geneval2_data.jsonl"), "--config", str(cfg), "--out", str(tmp_path / "out")]
    assert main([*args, "--first", "1", "--quiet", "--scorer", "verifier"]) == 0
    label = "self-check (not the benchmark's metric)"
    assert label in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metric"] == label and summary["scores"] == {"self_check": 100.0}
    assert label in (tmp_path / "out" / "report.md").read_text()
    assert label in html.unescape((tmp_path / "out" / "report.html").read_text())


def test_no_scorer_says_no_score_and_counts_prompts_as_prompts(stubs, tmp_path, capsys):
    from gems.interfaces.benchmarks.report import build_summary, headline
    from gems.interfaces.cli import main

    s = stubs()
    cfg = write_stub_config(tmp_path / "c.yaml", s.mllm.base_url, s.gen.url, data_dir=str(tmp_path / "data"))
    args = ["bench", str(DATA / "prompts.txt"), "--config", str(cfg), "--method", "original", "--scorer", "none"]
    assert main([*args, "--images-per-prompt", "3", "--quiet", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "original on text: 2/2 prompts; no score computed (--scorer none): export the images" in printed
    assert "None" not in printed and "incomplete" not in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    counts = [summary[k] for k in ("prompts", "images", "finished", "finished_images", "scored")]
    assert counts == [2, 6, 2, 6, 0] and summary["scores"] is None and summary["metric"] is None
    assert "- prompts: 2/2 finished (6/6 images)" in (tmp_path / "out" / "report.md").read_text()
    # A scored run still missing images says so in images, and a prompt counts once all its images exist.
    records = [{"id": "a", "sample": k, "scorer": "verifier", "score": {"self_check": 1.0}} for k in range(2)]
    partial = build_summary(records, run={"scorer": "verifier", "images_per_prompt": 2}, prompts=2, errors=[])
    assert headline(partial).startswith("self-check (not the benchmark's metric): incomplete, 2 of 4 images scored")
    assert partial["finished"] == 1 and partial["finished_images"] == 2


def test_bench_lessons_stay_off_or_inside_the_run_folder(stubs, isolated_env, tmp_path):
    s = stubs(criteria=CRITERIA)
    embeddings = {"provider": "openai", "base_url": s.mllm.base_url, "model": "emb", "api_key": "sk-e"}
    settings = s.settings(memory={"lessons": True}, embeddings=embeddings)
    run_bench(DATA / "prompts.txt", settings, "gems", tmp_path / "off", concurrency=1)
    assert not (isolated_env / "chroma").exists() and not (tmp_path / "off" / "lessons").exists()
    assert json.loads((tmp_path / "off" / "summary.json").read_text())["lessons"]["enabled"] is False
    summary = run_bench(DATA / "prompts.txt", settings, "gems", tmp_path / "on", concurrency=1, lessons=True)
    assert summary["lessons"] == {"enabled": True, "store": str(tmp_path / "on" / "lessons")}
    assert (tmp_path / "on" / "lessons").is_dir() and not (isolated_env / "chroma").exists()
    assert "order matters" in (tmp_path / "on" / "report.md").read_text()


def test_a_run_folder_belongs_to_one_run(stubs, tmp_path):
    from gems.interfaces.benchmarks.runner import BenchMismatch

    s = stubs(criteria=CRITERIA)
    from pydantic import SecretStr

    settings = s.settings()
    settings = settings.model_copy(
        update={"mllm": settings.mllm.model_copy(update={"api_key": SecretStr("sk-sec-123")})}
    )
    out = tmp_path / "out"
    run_bench(DATA / "prompts.txt", settings, "original", out, first=1)
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "original" and run["scorer"] == "none" and run["config_digest"]
    assert run["models"]["mllm"] == "stub-vlm" and isinstance(run["base_seed"], int) and run["gems_version"]
    assert run["started_at"] and run["finished_at"] and run["wall_s"] > 0
    assert "sk-sec-123" not in (out / "run.json").read_text()
    with pytest.raises(BenchMismatch, match="method=original, not rewrite; use --force-new"):
        run_bench(DATA / "prompts.txt", settings, "rewrite", out, first=1)
    run_bench(DATA / "prompts.txt", settings, "loop", tmp_path / "loop", first=1, scorer="verifier")
    with pytest.raises(BenchMismatch, match="scorer=verifier, not none"):
        run_bench(DATA / "prompts.txt", settings, "loop", tmp_path / "loop", first=1, scorer="none")
    other = settings.model_copy(update={"generator": settings.generator.model_copy(update={"steps": 3})})
    with pytest.raises(BenchMismatch, match=r"generator\.steps differ"):
        run_bench(DATA / "prompts.txt", other, "original", out, first=1)
    # The same run continues: the seed is the same and wall time accumulates.
    (out / "results" / "00000.json").unlink()
    run_bench(DATA / "prompts.txt", settings, "original", out, first=1)
    again = json.loads((out / "run.json").read_text())
    assert again["base_seed"] == run["base_seed"] and again["wall_s"] > run["wall_s"] and len(again["resumed_at"]) == 1
    assert s.gen.prompts.count("a red cube") == 3 and "a blue sphere" not in s.gen.prompts  # 1 by loop, 2 here
    summary = run_bench(DATA / "prompts.txt", settings, "rewrite", out, force_new=True)
    assert summary["method"] == "rewrite" and summary["finished"] == 2


def test_a_folder_is_one_selection_of_one_file(stubs, tmp_path):
    from gems.interfaces.benchmarks.runner import BenchMismatch

    s = stubs()
    settings = s.settings()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\na green cone\n")
    out = tmp_path / "out"
    run_bench(prompts, settings, "original", out, first=2)
    run = json.loads((out / "run.json").read_text())
    assert run["prompts_sha256"] == hashlib.sha256(prompts.read_bytes()).hexdigest()
    assert run["selection"] == {"kind": "first", "k": 2, "of": 3, "limit": None, "first": 2, "sample_seed": None}
    results = {p.name: p.read_bytes() for p in (out / "results").iterdir()}
    fix = "; use --force-new to start this folder over, or a new --out$"
    refused = {
        "--first 2, not --first 3": {"first": 3},
        "--first 2, not --limit 2 --sample-seed 0": {"limit": 2},
        "--first 2, not all prompts": {},
        "--first 2, not --first 2 --shard 1/2": {"first": 2, "shard": (1, 2)},
    }
    for message, selection in refused.items():
        with pytest.raises(BenchMismatch, match=f"holds a run of {message}{fix}"):
            run_bench(prompts, settings, "original", out, **selection)
    # The same bytes under another name are the same prompts: the run continues (nothing to do).
    moved = tmp_path / "moved.txt"
    moved.write_bytes(prompts.read_bytes())
    assert run_bench(moved, settings, "original", out, first=2)["finished"] == 2
    assert json.loads((out / "run.json").read_text())["prompts"] == str(moved)  # where it is read from now
    moved.write_text("a red cube\na blue sphere\na green cone\na white torus\n")
    with pytest.raises(
        BenchMismatch, match=r"holds a run of .*moved\.txt, changed since \(sha256 \w{12} then, \w{12} now\)"
    ):
        run_bench(moved, settings, "original", out, first=2)
    other = tmp_path / "other.txt"
    other.write_text("a black cat\na white dog\n")
    with pytest.raises(BenchMismatch, match=f"holds a run of another prompt file .*moved.txt.*not .*other.txt.*{fix}"):
        run_bench(other, settings, "original", out, first=2)
    # Nothing was lost or generated by the refused runs.
    assert {p.name: p.read_bytes() for p in (out / "results").iterdir()} == results and len(s.gen.prompts) == 2
    run_bench(moved, settings, "original", tmp_path / "sample", limit=2, sample_seed=0)
    with pytest.raises(BenchMismatch, match="--limit 2 --sample-seed 0, not --limit 2 --sample-seed 1"):
        run_bench(moved, settings, "original", tmp_path / "sample", limit=2, sample_seed=1)
    assert run_bench(other, settings, "original", out, first=2, force_new=True)["finished"] == 2


def test_limit_is_a_stratified_sample():
    from gems.interfaces.benchmarks.datasets import BenchPrompt
    from gems.interfaces.benchmarks.selection import select_items

    items = [BenchPrompt(f"{i:05d}", f"p{i}", meta={"atom_count": 3 + i // 10}) for i in range(40)]  # sorted by count
    chosen, selection = select_items(items, 8, None, seed=0)
    assert sorted(int(i.meta["atom_count"]) for i in chosen) == [3, 3, 4, 4, 5, 5, 6, 6]
    assert [i.id for i in chosen] == sorted(i.id for i in chosen) and selection["kind"] == "stratified"
    assert select_items(items, 8, None, seed=0)[0] == chosen and select_items(items, 8, None, seed=1)[0] != chosen
    assert [i.id for i in select_items(items, None, 3, seed=0)[0]] == ["00000", "00001", "00002"]
    with pytest.raises(ValueError, match="not both"):
        select_items(items, 3, 3, seed=0)


def test_export_writes_the_official_layouts(stubs, tmp_path):
    from PIL import Image

    from gems.interfaces.benchmarks.export import ExportError, export_run

    s = stubs()
    settings = s.settings()
    run_bench(DATA / "geneval2_data.jsonl", settings, "original", tmp_path / "g2", scorer="none")
    assert export_run(tmp_path / "g2", "geneval2", tmp_path / "x2") == 4
    mapping = json.loads((tmp_path / "x2" / "geneval2_images.json").read_text())
    assert next(iter(mapping)) == "two red apples on a blue plate" and all(Path(p).is_file() for p in mapping.values())

    run_bench(DATA / "evaluation_metadata.jsonl", settings, "original", tmp_path / "ge", images_per_prompt=2)
    assert export_run(tmp_path / "ge", "geneval", tmp_path / "xe", images_per_prompt=2) == 2
    assert json.loads((tmp_path / "xe" / "00001" / "metadata.jsonl").read_text())["tag"] == "two_object"
    assert sorted(p.name for p in (tmp_path / "xe" / "00001" / "samples").iterdir()) == ["0000.png", "0001.png"]
    with pytest.raises(ExportError, match="--images-per-prompt 4"):
        export_run(tmp_path / "ge", "geneval", tmp_path / "xe4", images_per_prompt=4)

    run_bench(DATA / "dpg", settings, "original", tmp_path / "dpg", images_per_prompt=4)
    from gems.interfaces.cli import main

    assert main(["bench", "export", str(tmp_path / "dpg"), "--format", "dpg", "--to", str(tmp_path / "xd"),
                 "--images-per-prompt", "4"]) == 0  # fmt: skip
    assert Image.open(tmp_path / "xd" / "desk.png").size == (64, 64)  # four 32x32 tiles, 2x2
    seeds = {json.loads(p.read_text())["seed"] for p in (tmp_path / "dpg" / "results").glob("desk*.json")}
    assert len(seeds) == 4  # each sample its own seed


def test_geneval2_export_of_a_selection_runs_in_the_official_script(stubs, tmp_path, capsys):
    from gems.interfaces.benchmarks.export import ExportError, export_run
    from gems.interfaces.cli import main

    s = stubs()
    settings = s.settings()
    data = tmp_path / "geneval2_data.jsonl"
    shutil.copyfile(DATA / "geneval2_data.jsonl", data)
    lines = data.read_text().splitlines()
    run_bench(data, settings, "original", tmp_path / "first", first=2, scorer="none")
    assert main(["bench", "export", str(tmp_path / "first"), "--format", "geneval2", "--to", str(tmp_path / "x")]) == 0
    # The whole data file stops the official script, as the issue saw; the export's own subset runs through.
    with pytest.raises(Exception, match="Missing filepath for the prompt: a cat sleeping next to a dog"):
        official_images(data, tmp_path / "x" / "geneval2_images.json")
    pairs = official_images(tmp_path / "x" / "geneval2_data.jsonl", tmp_path / "x" / "geneval2_images.json")
    assert (tmp_path / "x" / "geneval2_data.jsonl").read_text().splitlines() == lines[:2]  # the lines as written
    assert [Path(image).name for _, image in pairs] == ["00000.png", "00001.png"]
    # A stratified sample and a shard of it: their own lines, in the file's order.
    run_bench(data, settings, "original", tmp_path / "limit", limit=3, sample_seed=1, scorer="none")
    chosen = json.loads((tmp_path / "limit" / "run.json").read_text())["selection"]["ids"]
    assert export_run(tmp_path / "limit", "geneval2", tmp_path / "xl") == 3
    assert (tmp_path / "xl" / "geneval2_data.jsonl").read_text().splitlines() == [lines[int(i)] for i in chosen]
    run_bench(data, settings, "original", tmp_path / "shard", limit=3, sample_seed=1, shard=(2, 2), scorer="none")
    assert export_run(tmp_path / "shard", "geneval2", tmp_path / "xs") == 1
    assert (tmp_path / "xs" / "geneval2_data.jsonl").read_text().splitlines() == [lines[int(chosen[1])]]
    assert len(official_images(tmp_path / "xs" / "geneval2_data.jsonl", tmp_path / "xs" / "geneval2_images.json")) == 1
    # The prompt file moved or changed: refused, unless --prompts names the same bytes.
    moved = tmp_path / "moved.jsonl"
    data.rename(moved)
    with pytest.raises(ExportError, match="is not there; pass --prompts"):
        export_run(tmp_path / "first", "geneval2", tmp_path / "y")
    assert export_run(tmp_path / "first", "geneval2", tmp_path / "y", prompts=moved) == 2
    data.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(ExportError, match="is not the prompt file the run read"):
        export_run(tmp_path / "first", "geneval2", tmp_path / "y")


def test_export_refuses_another_benchmarks_layout(stubs, tmp_path, capsys):
    from gems.interfaces.benchmarks.export import ExportError, export_run
    from gems.interfaces.cli import main

    s = stubs()
    settings = s.settings()
    run_bench(DATA / "geneval2_data.jsonl", settings, "original", tmp_path / "g2", first=1, scorer="none")
    run_bench(DATA / "dpg", settings, "original", tmp_path / "dpg", first=1)
    run_bench(DATA / "prompts.txt", settings, "original", tmp_path / "text", first=1)
    capsys.readouterr()
    assert main(["bench", "export", str(tmp_path / "g2"), "--format", "dpg", "--to", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"gems: error: --format dpg is DPG-Bench's layout, but {tmp_path / 'g2'} ran geneval2 prompts; "
        "use --format geneval2\n"
    )
    with pytest.raises(ExportError, match=r"--format geneval2 is GenEval2's layout, but .* ran dpg prompts"):
        export_run(tmp_path / "dpg", "geneval2", tmp_path / "x")
    with pytest.raises(ExportError, match=r"ran text prompts; only GenEval2, GenEval and DPG-Bench runs export$"):
        export_run(tmp_path / "text", "dpg", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_continuation_after_only_the_first_checkpoint():
    from types import SimpleNamespace

    from gems.graph.builder import continuation

    assert continuation(SimpleNamespace(values={}, next=()), "p") == (True, {"prompt": "p"})
    # Killed right after the first checkpoint: values exist, nothing is next, nothing was finalized.
    assert continuation(SimpleNamespace(values={"prompt": "p", "rounds": []}, next=()), "p") == (True, {"prompt": "p"})
    assert continuation(SimpleNamespace(values={"prompt": "p"}, next=("generate",)), "p") == (True, None)
    assert continuation(SimpleNamespace(values={"prompt": "p", "final": {"round": 1}}, next=()), "p") == (False, None)


def test_lessons_in_a_bench_only_when_a_config_file_turns_them_on(tmp_path):
    from gems.configs.loading import configured_value

    on = tmp_path / "on.yaml"
    on.write_text("memory: {lessons: true}\n")
    assert configured_value(None, "memory.lessons", env={}) is None  # the default (true) does not count
    assert configured_value(["cpu"], "memory.lessons", env={}) is None
    assert configured_value(["cpu", str(on)], "memory.lessons", env={}) is True
    assert configured_value(["cpu", "ablations/gems-lessons"], "memory.lessons", env={}) is True
    assert configured_value(["ablations/skill"], "memory.lessons", env={}) is False


# ---- per prompt, where the prompt file is, the judge's tokenizer, empty shards, wall time ----


def test_cost_per_prompt_counts_every_image_of_a_prompt(stubs, tmp_path, capsys):
    """With N images per prompt a prompt costs N generations: the per-prompt column divides by prompts, not images;
    report.html shows the run's total wall time as well as the mean per prompt."""
    from gems.interfaces.cli import main

    s = stubs()
    cfg = write_stub_config(tmp_path / "c.yaml", s.mllm.base_url, s.gen.url, data_dir=str(tmp_path / "data"))
    out = tmp_path / "out"
    args = ["bench", str(DATA / "prompts.txt"), "--config", str(cfg), "--method", "original", "--scorer", "none"]
    assert main([*args, "--images-per-prompt", "2", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cost_total"]["generator_calls"] == 4 and summary["cost_per_prompt"]["generator_calls"] == 2.0
    walls = [json.loads(p.read_text())["cost"]["wall_s"] for p in (out / "results").glob("*.json")]
    assert summary["cost_per_prompt"]["wall_s"] == pytest.approx(sum(walls) / 2, abs=1e-3)
    assert "| generator_calls | 4 | 2.000 |" in (out / "report.md").read_text()
    page = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", (out / "report.html").read_text())).split())
    assert "per prompt (mean; a prompt's images together): 0 MLLM calls" in page and "· 2 generations (" in page
    wall = f"wall time: {summary['wall_s']:.3f} s in all (real elapsed, all sessions)"
    assert wall in page and wall in (out / "report.md").read_text()


def test_run_json_keeps_where_the_prompt_file_is(stubs, tmp_path, monkeypatch, capsys):
    """A prompt file named relatively is recorded absolutely: export and merge work from any folder."""
    from gems.interfaces.benchmarks.export import export_run
    from gems.interfaces.benchmarks.merge import merge_runs
    from gems.interfaces.cli import main

    s = stubs()
    settings = s.settings()
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    shutil.copyfile(DATA / "geneval2_data.jsonl", work / "my data.jsonl")
    monkeypatch.chdir(work)
    run_bench("my data.jsonl", settings, "original", tmp_path / "run", first=2, scorer="none")
    for k in (1, 2):
        run_bench("my data.jsonl", settings, "original", tmp_path / f"s{k}", first=2, shard=(k, 2), scorer="none")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["prompts"] == str(work / "my data.jsonl")
    monkeypatch.chdir(elsewhere)
    assert main(["bench", "export", str(tmp_path / "run"), "--format", "geneval2", "--to", str(tmp_path / "x")]) == 0
    assert "2 prompts written" in capsys.readouterr().out
    merge_runs([tmp_path / "s1", tmp_path / "s2"], tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / "run.json").read_text())["prompts"] == str(work / "my data.jsonl")
    assert export_run(tmp_path / "merged", "geneval2", tmp_path / "xm") == 2
    merged = (tmp_path / "merged" / "report.md").read_text()
    assert "s in all (real elapsed, the slowest of 2 shards, all sessions)" in merged


def test_an_empty_shard_says_it_holds_no_prompts(stubs, tmp_path, capsys):
    from gems.interfaces.cli import main

    s = stubs(criteria=CRITERIA)
    cfg = write_stub_config(tmp_path / "c.yaml", s.mllm.base_url, s.gen.url, data_dir=str(tmp_path / "data"))
    args = ["bench", str(DATA / "prompts.txt"), "--config", str(cfg), "--scorer", "verifier", "--quiet"]
    assert main([*args, "--shard", "3/3", "--out", str(tmp_path / "s3")]) == 0
    why = (
        "shard 3/3 holds no prompts: the selection has 2 prompt(s) for 3 shards, so some shards get none. Nothing to "
        "run or score here; use at most 2 shard(s) (--shard K/2), or merge this folder with the other shards as it is"
    )
    assert why in capsys.readouterr().out and "incomplete" not in (tmp_path / "s3" / "report.md").read_text()
    assert why in (tmp_path / "s3" / "report.md").read_text() and s.gen.prompts == []


BAD_TOKENIZERS = {
    "no-such-folder": ("/nonexistent/tok", "/nonexistent/tok: no such folder, and not a Hugging Face hub id; give "),
    "no-tokenizer-in-it": ("{tmp}/empty", "{tmp}/empty is a folder with no tokenizer in it (no tokenizer.json); give "),
    "not-cached-offline": ("acme/judge-tok", "acme/judge-tok is not in the Hugging Face cache and HF_HUB_OFFLINE is "
                           "set: download it first (hf download acme/judge-tok) or set judge.tokenizer to a folder"),
    "unreadable": ("{tmp}/broken", "{tmp}/broken could not be loaded: "),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_TOKENIZERS))
def test_a_bad_judge_tokenizer_is_one_line_before_anything_runs(stubs, tmp_path, monkeypatch, capsys, case):
    from gems.interfaces.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("not a tokenizer")
    tokenizer, problem = (text.replace("{tmp}", str(tmp_path)) for text in BAD_TOKENIZERS[case])
    s = stubs()
    judge = {"base_url": s.mllm.base_url, "model": "j", "tokenizer": tokenizer}
    cfg = write_stub_config(tmp_path / "c.yaml", s.mllm.base_url, s.gen.url, data_dir=str(tmp_path / "d"), judge=judge)
    args = ["bench", str(DATA / "geneval2_data.jsonl"), "--config", str(cfg), "--method", "original", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gems: error: judge.tokenizer {problem}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and s.gen.prompts == []  # refused before the folder or a prompt


def test_report_md_escapes_categories_and_failures():
    """A category or a failure message with `|` or HTML keeps the table's columns and reads as written."""
    from gems.interfaces.benchmarks.report import build_summary, report_markdown

    records = [{"id": str(n), "categories": [c], "scorer": "verifier", "score": {"self_check": 1.0}}
               for n, c in enumerate(["colour | pipe", "<b>x</b>"])]  # fmt: skip
    summary = build_summary(records, run={"scorer": "verifier"}, prompts=3, errors=["2: got <lost> | gave up"])
    markdown = report_markdown(summary)
    assert r"| \<b>x\</b> | 100.00 | 1 |" in markdown and r"| colour \| pipe | 100.00 | 1 |" in markdown
    assert r"- 2: got \<lost> \| gave up" in markdown
