"""Each role's node on its own: hand-built state, scripted replies, no graph and no server.

`use_chat_model(ScriptedChat(...))` stands in for the MLLM endpoint; the node runs its real prompts, parsing,
deadlines and state update. Whole runs through the real client are in test_loop.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.runtime import Runtime
from PIL import Image

from gems.configs import GemsSettings
from gems.memory.artifacts import ArtifactStore
from gems.nodes.compress import compress
from gems.nodes.critique import critique, verify
from gems.nodes.decompose import CRITERIA_ERROR, decompose
from gems.nodes.finalize import finalize
from gems.nodes.mllm import MLLMError, use_chat_model
from gems.nodes.plan import plan, prepare
from gems.nodes.refine import EMPTY_PROMPT_ERROR, NO_ACTION_WARNING, refine
from gems.nodes.review import parse_review, parse_round_review
from tests.support.scripted_chat import ScriptedChat

Q = ["Is there a cat?", "Is the cat red?"]


@pytest.fixture
def settings(tmp_path: Path) -> GemsSettings:
    return GemsSettings.model_validate(
        {"data_dir": str(tmp_path), "memory": {"lessons": False}, "storage": {"checkpointer": "memory"}}
    )


def call(node: Any, state: Any, settings: GemsSettings, chat: ScriptedChat) -> dict[str, Any]:
    """Run an async node once with `chat` playing the MLLM."""
    with use_chat_model(chat):
        return asyncio.run(node(state, Runtime(context=settings)))


def image(settings: GemsSettings, color=(200, 0, 0)) -> dict[str, Any]:
    return ArtifactStore(settings.artifacts_dir).put_image(Image.new("RGB", (16, 16), color), seed=1)


def round_record(n: int, img: dict[str, Any], passed: list[str], failed: list[str], **extra: Any) -> dict[str, Any]:
    return {"round": n, "prompt": f"prompt {n}", "image": img, "passed": passed, "failed": failed, "verdicts": [],
            "experience": None, **extra}  # fmt: skip


# --- decompose ---------------------------------------------------------------------------------------------------


def test_decompose_reads_a_json_list_of_the_original_request(settings):
    chat = ScriptedChat(replies=['```json\n["Is there a cat?", "Is the cat red?"]\n```'])
    update = call(decompose, {"prompt": "a red cat"}, settings, chat)
    assert update["criteria"] == Q and update["mllm_calls"] == 1
    assert "a red cat" in chat.sent[0][-1].content


def test_decompose_repairs_once_then_fails_in_one_line(settings):
    chat = ScriptedChat(replies=["a cat, red", json.dumps(Q)])
    assert call(decompose, {"prompt": "a red cat"}, settings, chat)["criteria"] == Q
    assert "a cat, red" in chat.sent[1][-1].content  # the unreadable answer is shown back
    with pytest.raises(MLLMError, match=CRITERIA_ERROR.split("(")[0].strip()):
        call(decompose, {"prompt": "a red cat"}, settings, ScriptedChat(replies=["no", "still no"]))


def test_decompose_caps_the_criteria_with_a_warning(settings):
    capped = settings.model_copy(update={"loop": settings.loop.model_copy(update={"max_criteria": 2})})
    update = call(decompose, {"prompt": "x"}, capped, ScriptedChat(replies=[json.dumps([*Q, "Is it day?"])]))
    assert update["criteria"] == Q and "kept the first 2" in update["warnings"][0]


# --- verify and critique -----------------------------------------------------------------------------------------


def task(settings: GemsSettings, criterion: str = "Is there a cat?", index: int = 0) -> dict[str, Any]:
    return {"round": 1, "candidate": 0, "index": index, "criterion": criterion, "image": image(settings)}


@pytest.mark.parametrize(
    ("answer", "passed", "error"),
    [("Yes, nothing is missing.", True, None), ("no", False, None), ("not sure", False, "neither yes nor no")],
)
def test_verify_reads_the_first_word(settings, answer, passed, error):
    chat = ScriptedChat(replies=[answer])
    (verdict,) = call(verify, task(settings), settings, chat)["verdicts"]
    assert verdict["passed"] is passed and (verdict["error"] or "").endswith(error or "")
    sent = chat.sent[0][-1].content
    assert sent[0]["text"] == "Question: Is there a cat?" and sent[1]["image_url"]["url"].startswith("data:image/png")


def test_verify_counts_an_endpoint_error_as_a_fail(settings):
    chat = ScriptedChat(replies=[RuntimeError("server exploded")])
    (verdict,) = call(verify, task(settings), settings, chat)["verdicts"]
    assert verdict["passed"] is False and "server exploded" in verdict["error"]


def test_critique_keeps_the_best_candidate_and_its_lineage(settings):
    a, b = {"sha256": "a" * 64}, {"sha256": "b" * 64}
    verdicts = [
        {"round": 2, "candidate": 0, "index": 0, "criterion": Q[0], "passed": True, "answer": "yes", "error": None},
        {"round": 2, "candidate": 0, "index": 1, "criterion": Q[1], "passed": False, "answer": "no", "error": None},
        {"round": 2, "candidate": 1, "index": 0, "criterion": Q[0], "passed": True, "answer": "yes", "error": None},
        {"round": 2, "candidate": 1, "index": 1, "criterion": Q[1], "passed": True, "answer": "yes", "error": None},
    ]
    state = {"prompt": "a red cat", "round": 2, "criteria": Q, "candidates": [a, b], "verdicts": verdicts,
             "current_prompt": "p2", "rounds": [round_record(1, a, [Q[0]], [Q[1]])]}  # fmt: skip
    (record,) = asyncio.run(critique(state, Runtime(context=settings)))["rounds"]
    assert record["image"] == b and record["passed"] == Q and record["failed"] == []
    assert (record["kept"], record["fixed"], record["broken"], record["base_round"]) == ([Q[0]], [Q[1]], [], 1)


# --- compress and refine -----------------------------------------------------------------------------------------


def test_compress_writes_the_latest_rounds_experience_within_the_word_limit(settings):
    state = {"prompt": "a red cat", "criteria": Q, "rounds": [round_record(1, image(settings), [Q[0]], [Q[1]])]}
    update = call(compress, state, settings, ScriptedChat(replies=[" ".join(["word"] * 150)]))
    assert update["rounds"] == [{"round": 1, "experience": " ".join(["word"] * 100)}]
    off = settings.model_copy(update={"memory": settings.memory.model_copy(update={"mode": "last"})})
    assert call(compress, state, off, ScriptedChat()) == {}  # no experiences in this memory mode: no call


def test_refine_writes_the_next_prompt_from_the_whole_history(settings):
    rounds = [round_record(1, image(settings), [Q[0]], [Q[1]], experience="say crimson")]
    chat = ScriptedChat(replies=[AIMessage(content="a crimson cat", additional_kwargs={"reasoning_content": "why"})])
    update = call(refine, {"prompt": "a red cat", "criteria": Q, "round": 1, "rounds": rounds}, settings, chat)
    assert update["current_prompt"] == "a crimson cat" and update["thought"] == "why"
    assert update["action"] == {"round": 2, "mode": "generate"}
    text = " ".join(p.get("text", "") for p in chat.sent[0][-1].content if isinstance(p, dict))
    assert "a red cat" in text and "say crimson" in text and "Is the cat red?" in text


def test_refine_refuses_an_empty_prompt_and_cuts_a_runaway_one(settings):
    state = {"prompt": "a red cat", "criteria": Q, "round": 1,
             "rounds": [round_record(1, image(settings), [], Q)]}  # fmt: skip
    with pytest.raises(MLLMError, match=EMPTY_PROMPT_ERROR):
        call(refine, state, settings, ScriptedChat(replies=["   "]))
    update = call(refine, state, settings, ScriptedChat(replies=["cat " * 2000]))
    assert (
        len(update["current_prompt"]) <= settings.loop.max_prompt_chars and "max_prompt_chars" in update["warnings"][0]
    )


def test_refine_auto_without_an_action_draws_anew_and_warns(settings):
    edits = settings.model_copy(
        update={"loop": settings.loop.model_copy(update={"refine_mode": "auto"}),
                "editor": settings.editor.model_copy(update={"backend": "openai", "url": "http://x/v1", "model": "e"})}
    )  # fmt: skip
    state = {"prompt": "a red cat", "criteria": Q, "round": 1,
             "rounds": [round_record(1, image(settings), [Q[0]], [Q[1]])]}  # fmt: skip
    update = call(refine, state, edits, ScriptedChat(replies=["a redder cat"]))
    assert update["action"]["mode"] == "generate" and update["warnings"] == [NO_ACTION_WARNING]
    update = call(refine, state, edits, ScriptedChat(replies=["ACTION: edit\nREASON: colour\nTEXT: make it red"]))
    assert update["action"]["mode"] == "edit" and update["action"]["base_round"] == 1
    assert (update["current_prompt"], update["action"]["reason"]) == ("make it red", "colour")


# --- plan, prepare, finalize, review -----------------------------------------------------------------------------


def test_plan_offers_skills_and_loads_one_by_a_tool_call(settings):
    chat = ScriptedChat(replies=[AIMessage(content="", tool_calls=[{"name": "load_skill", "args": {"name": "counting"},
                                                                    "id": "c1"}])])  # fmt: skip
    update = call(plan, {"prompt": "three red apples"}, settings, chat)
    offered = [c["name"] for c in update["skill_trace"]["offered"]]
    assert "counting" in offered
    system, human, reply = update["planner_messages"]  # records: the stream of chat messages never carries them
    assert (system["type"], human["type"], reply["tool_calls"][0]["name"]) == ("system", "human", "load_skill")
    assert chat.tools_bound == [["load_skill", "read_skill_resource"]]


def test_plan_text_mode_takes_none_as_no_skill(settings):
    text = settings.model_copy(update={"skills": settings.skills.model_copy(update={"tool_calling": "text"})})
    update = call(plan, {"prompt": "a red cat"}, text, ScriptedChat(replies=["NONE"]))
    assert update["skill_trace"]["chosen"] == [] and "current_prompt" not in update and update["mllm_calls"] == 1


def test_prepare_uses_the_rewrite_only_when_a_skill_was_loaded(settings):
    call_msg = AIMessage(content="", tool_calls=[{"name": "load_skill", "args": {"name": "counting"}, "id": "c1"}])
    loaded = ToolMessage(content="body", name="load_skill", tool_call_id="c1", artifact={"name": "counting"})
    messages = [SystemMessage(content="s"), HumanMessage(content="h"), call_msg, loaded,
                AIMessage(content="exactly three red apples")]  # fmt: skip
    state = {"prompt": "three apples", "planner_messages": messages, "skill_trace": {"offered": []}}
    update = prepare(state, Runtime(context=settings))
    assert update["current_prompt"] == "exactly three red apples" and update["skill"] == "counting"
    update = prepare({"prompt": "three apples", "planner_messages": [*messages[:2], AIMessage(content="NONE")]},
                     Runtime(context=settings))  # fmt: skip
    assert update["current_prompt"] == "three apples" and update["skill"] is None


def test_finalize_returns_the_earliest_best_round_when_nothing_passed_everything(settings):
    a, b = {"sha256": "a" * 64}, {"sha256": "b" * 64}
    rounds = [round_record(1, a, [Q[0]], [Q[1]]), round_record(2, b, [Q[1]], [Q[0]])]
    update = asyncio.run(finalize({"prompt": "x", "criteria": Q, "rounds": rounds}, Runtime(context=settings)))
    assert update["final"] == {"round": 1, "image": a, "passed": 1, "total": 2} and update["success"] is False


@pytest.mark.parametrize(
    "answer", [None, {}, "", [], "accept", {"accept": True}, [{"type": "accept", "args": None}],
               {"decisions": [{"type": "approve"}]}, [{"type": "ignore", "args": None}]],
)  # fmt: skip
def test_review_accepts_every_way_of_saying_yes(answer):
    assert parse_review(answer) == ({}, None)


def test_review_edits_in_gems_and_inbox_shapes():
    update, error = parse_review({"criteria": ["Is it red?"], "first_prompt": "a red cat"})
    assert error is None and update["criteria"] == ["Is it red?"] and update["current_prompt"] == "a red cat"
    inbox = [{"type": "edit", "args": {"action": "review_plan", "args": {"first_prompt": "a cat", "criteria": Q}}}]
    assert parse_review(inbox)[0] == {"criteria": Q, "current_prompt": "a cat", "thought": update["thought"]}
    assert parse_review([{"type": "response", "args": "a big red cat"}])[0]["current_prompt"] == "a big red cat"
    as_text = [{"type": "edit", "args": {"action": "review_plan", "args": {"criteria": json.dumps(Q)}}}]
    assert parse_review(as_text)[0] == {"criteria": Q}  # a form's text box sends the list as text
    assert parse_review({"criteria": "Is there a cat?\nIs the cat red?"})[0] == {"criteria": Q}
    assert parse_review({"bogus": 1})[1] and parse_review({"criteria": 3})[1]
    rejected = parse_review({"decisions": [{"type": "reject", "message": "a cat in snow instead"}]})[0]
    assert rejected["current_prompt"] == "a cat in snow instead"  # a rejection's reason is the prompt to use
    assert parse_review({"decisions": [{"type": "reject"}]})[1]


def test_round_review_answers():
    assert parse_round_review("continue") == ({}, None) and parse_round_review({}) == ({}, None)
    assert parse_round_review({"accept": True}) == ({"accept": True}, None)
    shown = {"round": 1, "image_url": "u", "passed": [], "failed": Q, "next_prompt": "", "criteria": Q}
    assert parse_round_review([{"type": "edit", "args": {"action": "review_round", "args": shown}}])[0] == {
        "criteria": Q}  # fmt: skip
    assert parse_round_review({"next_prompt": "a red cat"})[0] == {"reviewer_prompt": "a red cat"}
    assert parse_round_review([{"type": "response", "args": "bigger"}])[0] == {"reviewer_prompt": "bigger"}
    assert parse_round_review({"next_prompt": 3})[1] and parse_round_review({"weird": 1})[1]
