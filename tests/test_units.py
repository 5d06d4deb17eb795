"""The loop's pure logic on hand-built state: routers, reducers, critique, finalize, review, seeds. No servers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.runtime import Runtime
from langgraph.types import Send

from gems.configs import GemsSettings
from gems.graph.routing import (
    MAX_TOOL_TURNS,
    recursion_limit_for,
    route_after_critique,
    route_after_generate,
    route_after_plan,
)
from gems.memory.state import add_numbers, merge_rounds
from gems.memory.trajectory import best_round
from gems.nodes.critique import critique
from gems.nodes.finalize import finalize
from gems.nodes.generate import seed_for
from gems.nodes.review import parse_review

CRITERIA = ["Is there a cat?", "Is the cat red?", "Is it on a mat?"]


def _verdict(rnd: int, candidate: int, index: int, passed: bool) -> dict[str, Any]:
    return {"round": rnd, "candidate": candidate, "index": index, "criterion": CRITERIA[index], "passed": passed,
            "answer": "yes" if passed else "no", "error": None}  # fmt: skip


@pytest.fixture
def runtime(tmp_path: Path) -> Any:
    return Runtime(context=GemsSettings(data_dir=tmp_path))


def _round(n: int, passed: int) -> dict[str, Any]:
    return {"round": n, "image": {"sha256": f"img{n}"}, "passed": CRITERIA[:passed], "failed": CRITERIA[passed:]}


# ---- routers ----


def test_route_after_plan_runs_tool_calls_until_the_turn_limit():
    call = AIMessage(content="", tool_calls=[{"name": "load_skill", "args": {"name": "counting"}, "id": "c1"}])
    assert route_after_plan({"prompt": "p", "planner_messages": [HumanMessage("p"), call]}) == "skills"
    assert route_after_plan({"prompt": "p", "planner_messages": [HumanMessage("p"), AIMessage("done")]}) == "prepare"
    assert route_after_plan({"prompt": "p"}) == "prepare"
    many = [HumanMessage("p")] + [call] * (MAX_TOOL_TURNS + 1)
    assert route_after_plan({"prompt": "p", "planner_messages": many}) == "prepare"


def test_route_after_generate_sends_one_task_per_candidate_and_criterion(runtime):
    state: Any = {"prompt": "p", "round": 2, "criteria": CRITERIA[:2], "candidates": [{"sha256": "a"}, {"sha256": "b"}]}
    sends = route_after_generate(state, runtime)
    assert isinstance(sends, list) and all(isinstance(s, Send) and s.node == "verify" for s in sends)
    assert [(s.arg["candidate"], s.arg["index"], s.arg["round"]) for s in sends] == [
        (0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2)
    ]  # fmt: skip
    assert route_after_generate({"prompt": "p", "round": 1, "criteria": [], "candidates": [{}]}, runtime) == "finalize"
    batched: Any = Runtime(context=GemsSettings(data_dir=runtime.context.data_dir, loop={"verify": "batched"}))
    sends = route_after_generate(state, batched)
    assert isinstance(sends, list) and [(s.arg["candidate"], s.arg["criteria"]) for s in sends] == [
        (0, CRITERIA[:2]), (1, CRITERIA[:2])
    ]  # fmt: skip  # one call per image, every criterion in it


@pytest.mark.parametrize(
    ("round_no", "max_rounds", "failed", "review", "expected"),
    [(1, 5, [], False, "finalize"), (1, 5, ["q"], False, "compress"), (5, 5, ["q"], False, "finalize"),
     (2, 2, ["q"], False, "finalize"), (1, 5, ["q"], True, "review_round"), (1, 5, [], True, "finalize"),
     (5, 60, ["q"], False, "finalize")],  # 60 is past the cap: the settings' budget (5) stands
)  # fmt: skip
def test_route_after_critique(round_no, max_rounds, failed, review, expected, runtime):
    state: Any = {
        "prompt": "p",
        "round": round_no,
        "max_rounds": max_rounds,
        "review_rounds": review,
        "rounds": [{"round": 1, "failed": failed}],
    }
    assert route_after_critique(state, runtime) == expected


def test_recursion_limit_grows_with_rounds():
    assert recursion_limit_for(5) == 60 and recursion_limit_for(1) < recursion_limit_for(2)


# ---- reducers ----


def test_merge_rounds_upserts_by_round_number():
    left = [{"round": 1, "prompt": "a"}, {"round": 2, "prompt": "b"}]
    merged = merge_rounds(left, [{"round": 2, "experience": "x"}, {"round": 3, "prompt": "c"}])  # type: ignore[list-item]
    assert merged == [{"round": 1, "prompt": "a"}, {"round": 2, "prompt": "b", "experience": "x"},
                      {"round": 3, "prompt": "c"}]  # fmt: skip
    assert merge_rounds(None, None) == []


def test_add_numbers_sums_key_by_key():
    assert add_numbers({"a": 1.0, "b": 2.0}, {"b": 0.5, "c": 3.0}) == {"a": 1.0, "b": 2.5, "c": 3.0}
    assert add_numbers(None, {"a": 1.0}) == {"a": 1.0}


# ---- critique, best round, finalize ----


def test_critique_keeps_the_best_candidate_and_the_earliest_on_a_tie(runtime):
    verdicts = [
        _verdict(1, 0, 0, True),
        _verdict(1, 0, 1, False),
        _verdict(1, 0, 2, False),
        _verdict(1, 1, 0, True),
        _verdict(1, 1, 1, True),
        _verdict(1, 1, 2, False),
        _verdict(1, 2, 0, True),
        _verdict(1, 2, 1, True),
        _verdict(1, 2, 2, False),
        _verdict(0, 0, 2, True),
    ]  # fmt: skip  (the last is from another round: ignored)
    state: Any = {"prompt": "p", "round": 1, "criteria": CRITERIA, "verdicts": verdicts, "current_prompt": "cp",
                  "candidates": [{"sha256": "c0"}, {"sha256": "c1"}, {"sha256": "c2"}]}  # fmt: skip
    record = asyncio.run(critique(state, runtime))["rounds"][0]
    assert record["image"] == {"sha256": "c1"}  # candidates 1 and 2 tie at 2/3: the earlier wins
    assert record["passed"] == CRITERIA[:2] and record["failed"] == CRITERIA[2:] and record["prompt"] == "cp"
    assert len(record["candidates"]) == 3 and [v["candidate"] for v in record["verdicts"]] == [1, 1, 1]


def test_best_round_is_the_earliest_with_the_most_passes():
    rounds = [_round(1, 1), _round(2, 2), _round(3, 1), _round(4, 2), _round(5, 0)]
    assert best_round(rounds)["round"] == 2  # type: ignore[index]
    assert best_round([]) is None


def test_finalize_success_best_so_far_and_no_criteria(runtime):
    success: Any = {"prompt": "p", "criteria": CRITERIA, "rounds": [_round(1, 1), _round(2, 3)]}
    done = asyncio.run(finalize(success, runtime))
    assert done["final"] == {"round": 2, "image": {"sha256": "img2"}, "passed": 3, "total": 3} and done["success"]
    assert done["messages"][0].content.startswith("**Done**: all 3 criteria passed in round 2.")
    spent: Any = {"prompt": "p", "criteria": CRITERIA, "rounds": [_round(1, 1), _round(2, 2), _round(3, 0)]}
    assert (
        asyncio.run(finalize(spent, runtime))["final"]["round"] == 2
        and asyncio.run(finalize(spent, runtime))["success"] is False
    )
    unchecked: Any = {"prompt": "p", "criteria": [], "round": 1, "candidates": [{"sha256": "only"}]}
    assert asyncio.run(finalize(unchecked, runtime))["final"] == {
        "round": 1,
        "image": {"sha256": "only"},
        "passed": 0,
        "total": 0,
    }
    accepted: Any = {**spent, "accepted_round": 3}  # a reviewer took round 3's image: it is the answer
    assert (
        asyncio.run(finalize(accepted, runtime))["final"]["round"] == 3
        and asyncio.run(finalize(accepted, runtime))["final"]["accepted"]
    )


# ---- review and seeds ----


def test_parse_review_applies_edits_and_names_what_is_wrong():
    assert parse_review(None) == ({}, None)
    update, error = parse_review({"criteria": [" Is it red? "], "first_prompt": " a red cat "})
    assert error is None and update["criteria"] == ["Is it red?"] and update["current_prompt"] == "a red cat"
    assert "must accept, or give criteria and/or first_prompt" in str(parse_review({"nope": 1})[1])
    assert parse_review({"criteria": ["", "x"]})[1] == "criteria must be a non-empty list of non-empty questions"
    assert parse_review({"first_prompt": "  "})[1] == "first_prompt must be a non-empty string"


def test_seed_for_is_distinct_per_round_and_candidate_and_random_without_a_base():
    seeds = {seed_for(100, r, c, 3) for r in (1, 2) for c in range(3)}
    assert seeds == set(range(100, 106))
    assert seed_for(7, 1, 0, 1) == 7 and seed_for(7, 2, 0, 1) == 8
    assert len({seed_for(None, 1, 0, 1) for _ in range(20)}) > 1


# ---- the efficient loop's parsers ----


def test_parse_verdicts_reads_json_or_numbered_lines_and_leaves_out_the_unclear():
    from gems.nodes.parsing import parse_verdicts, split_lesson

    answer = '```json\n[{"n": 1, "answer": "Yes", "why": "a cat"}, {"n": 2, "answer": "not sure"}]\n```'
    assert parse_verdicts(answer, 3) == {1: (True, "a cat")}  # 2 unclear, 3 missing
    assert parse_verdicts('["yes", "no", "yes"]', 3) == {1: (True, ""), 2: (False, ""), 3: (True, "")}
    assert parse_verdicts("1. yes - a cat\n2) No, it is blue\n3: maybe", 3) == {
        1: (True, "yes - a cat"), 2: (False, "No, it is blue")}  # fmt: skip
    assert parse_verdicts("I cannot tell.", 2) == {}
    lesson, rest = split_lesson("LESSON: say crimson, twice.\nPROMPT: a crimson cat")
    assert (lesson, rest) == ("say crimson, twice.", "PROMPT: a crimson cat")
    assert split_lesson("a crimson cat") == (None, "a crimson cat")
    lesson, rest = split_lesson("LESSON: keep the mat\nACTION: edit\nREASON: colour\nTEXT: make it red")
    assert lesson == "keep the mat" and rest.startswith("ACTION: edit")


@pytest.mark.parametrize(
    ("answer", "kept"),
    [
        # A question answered twice, differently: that one is asked again.
        ('[{"n":1,"answer":"yes"},{"n":1,"answer":"no"},{"n":2,"answer":"no"},{"n":3,"answer":"no"}]', {2, 3}),
        ('[{"n":1,"answer":"no"},{"n":1,"answer":"no"},{"n":2,"answer":"no"},{"n":3,"answer":"no"}]', {1, 2, 3}),
        ('["Here are my answers", "yes", "yes", "no"]', set()),  # in order, one too many: which is which?
        ('["yes", "no"]', set()),  # in order, one short
        ('[{"n":0,"answer":"no"},{"n":1,"answer":"yes"},{"n":2,"answer":"yes"}]', set()),  # counted from 0
        ('[{"n":1,"answer":"no"},{"n":2,"answer":"no"},{"n":3,"answer":"no"},{"n":4,"answer":"yes"}]', set()),
        ('[{"n":true,"answer":"yes"},{"n":2,"answer":"no"},{"n":3,"answer":"no"}]', {2, 3}),
        ('[{"n":"1","answer":"yes"},{"n":2,"answer":"no"},{"n":3,"answer":"no"}]', {2, 3}),
        ('[{"answer":"yes"},{"answer":"no"},{"answer":"no"}]', {1, 2, 3}),  # objects in order, one each
        ("0. yes\n1. no\n2. no", set()),
        ("1. yes\n1. no\n2. no\n3. no", {2, 3}),
    ],
)
def test_batched_verdicts_are_kept_only_when_tied_to_their_question(answer, kept):
    from gems.nodes.parsing import parse_verdicts

    assert set(parse_verdicts(answer, 3)) == kept


@pytest.mark.parametrize(
    ("answer", "lesson", "prompt"),
    [
        ("LESSON: the cube was blue.\nA red cube on the left", "the cube was blue.", "A red cube on the left"),
        ("LESSON: the cube was blue. PROMPT: a red cube", "the cube was blue.", "a red cube"),
        ("LESSON: blue cube\n```\na red cube\n```", "blue cube", "a red cube"),
        ("Lesson - the cube was blue.\nPROMPT: a red cube", "the cube was blue.", "a red cube"),
        ("### Lesson\nthe cube was blue\n\nPROMPT: a red cube", "the cube was blue", "a red cube"),
        ("### Lesson\nthe cube was blue\n\na red cube", "the cube was blue", "a red cube"),
        ("**Lesson:** the cube was blue\n\n**PROMPT:** a red cube", "the cube was blue", "a red cube"),
        ("Here is my answer.\nPROMPT: a red cube", None, "a red cube"),  # no lesson; the preamble is dropped
        ("a red cube\nLESSON: the cube was blue", "the cube was blue", "a red cube"),
        ("LESSON: the prompt: was vague\nPROMPT: a red cube", "the prompt: was vague", "a red cube"),
    ],
)
def test_a_merged_answer_slightly_off_form_still_splits_into_lesson_and_prompt(answer, lesson, prompt):
    from gems.nodes.parsing import clean_prompt, split_lesson

    found, rest = split_lesson(answer)
    assert (found, clean_prompt(rest)) == (lesson, prompt)


def test_key_names_are_tenants_and_keys_are_distinct():
    from gems.configs import ConfigError
    from gems.interfaces.keys import check_keys

    check_keys({"alice": "a" * 16, "bob_smith-2": "b" * 16})
    for keys, says in (
        ({"bob smith": "b" * 16}, "names are tenants"),
        ({"team.alice": "b" * 16}, "names are tenants"),  # LangGraph's store refuses '.' in a namespace label
        ({"alice": "k" * 16, "bob": "k" * 16}, "share a key"),
        ({"alice": "short"}, "at least 16 characters"),
    ):
        with pytest.raises(ConfigError, match=says):
            check_keys(keys)


def test_the_shared_key_keeps_to_its_own_store_beside_named_tenants():
    from types import SimpleNamespace

    from gems.interfaces.agent_auth import own_store

    def ask(identity: str, action: str, namespace: tuple[str, ...]) -> Any:
        ctx = SimpleNamespace(user=SimpleNamespace(identity=identity), action=action)
        value = {"namespace": namespace}
        try:
            asyncio.run(own_store(ctx, value))
        except Exception as exc:
            return getattr(exc, "status_code", exc)
        return value["namespace"]

    assert ask("default", "search", ("gems", "tenants", "alice")) == 403
    assert ask("default", "search", ("gems", "lessons")) == ("gems", "lessons")
    assert ask("default", "list_namespaces", ("gems",)) == ("gems", "lessons")
    assert ask("alice", "get", ("gems", "tenants", "bob", "lessons")) == 403
    assert ask("anonymous", "search", ("gems", "tenants", "alice")) == ("gems", "tenants", "alice")  # no keys: one user


def test_a_base_url_with_or_without_its_last_slash_is_one_endpoint():
    from gems.configs import GemsSettings
    from gems.configs.loading import settings_digest

    slash = GemsSettings(mllm={"base_url": "http://h:8000/v1/"}, embeddings={"base_url": "http://e/v1/"})
    plain = GemsSettings(mllm={"base_url": "http://h:8000/v1"}, embeddings={"base_url": "http://e/v1"})
    assert slash.mllm.base_url == "http://h:8000/v1" and settings_digest(slash) == settings_digest(plain)
