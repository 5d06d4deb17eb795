"""The GEMS loop end to end: real ChatOpenAI against a scripted local server, real HTTP generator calls."""

from __future__ import annotations

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from gems.graph import build_graph, run_config
from gems.nodes.generators import GeneratorError
from gems.nodes.mllm import MLLMError
from tests.conftest import make_settings
from tests.support.servers import user_text

CRITERIA = ["Is there a cat?", "Is the cat red?", "Is the cat on a mat?"]


def run(settings, prompt="a red cat on a mat", thread="t1", checkpointer=None):
    graph = build_graph(checkpointer=checkpointer or InMemorySaver())
    config = run_config(settings, thread)
    graph.invoke({"prompt": prompt}, config, context=settings, durability="sync")
    return graph.get_state(config).values, graph, config


def passes_from_round(k: int):
    """Criterion 'Is the cat red?' fails until attempt k; the others always pass."""
    return lambda q, n: "yes" if q != "Is the cat red?" or n >= k else "no"


def test_loop_succeeds_at_round_k_and_counts_calls(stubs):
    s = stubs(criteria=CRITERIA, verdict=passes_from_round(3))
    values, _, _ = run(s.settings())

    assert values["success"] is True
    assert [r["round"] for r in values["rounds"]] == [1, 2, 3]
    assert values["final"]["round"] == 3 and values["final"]["passed"] == 3
    # Round 1 uses the original prompt (router said NONE), later rounds the refiner's prompts.
    assert s.gen.prompts == ["a red cat on a mat", "refined prompt 1", "refined prompt 2"]
    # route + decompose + 3 rounds x 3 verifications + 2 x (compress + refine)
    assert s.script.calls == {"route": 1, "decompose": 1, "verify": 9, "compress": 2, "refine": 2}
    assert values["mllm_calls"] == 15 and values["generator_calls"] == 3
    assert values["rounds"][0]["failed"] == ["Is the cat red?"]
    assert values["rounds"][0]["experience"].startswith("Lesson")
    assert values["rounds"][-1]["experience"] is None  # no compression after the last round


def test_no_success_returns_best_round_earliest_on_tie(stubs):
    # Passed per round: 1, 2, 1, 2, 0 -> best is round 2 (round 4 ties and loses).
    table = {1: 1, 2: 2, 3: 1, 4: 2, 5: 0}

    def verdict(q: str, n: int) -> str:
        return "yes" if CRITERIA.index(q) < table[n] else "no"

    s = stubs(criteria=CRITERIA, verdict=verdict)
    values, _, _ = run(s.settings())

    assert values["success"] is False
    assert len(values["rounds"]) == 5 and len(s.gen.prompts) == 5
    assert values["final"]["round"] == 2 and values["final"]["passed"] == 2 and values["final"]["total"] == 3
    assert values["final"]["image"] == values["rounds"][1]["image"]
    assert s.script.calls["refine"] == 4 and s.script.calls["compress"] == 4


def test_max_rounds_option_bounds_the_loop(stubs):
    s = stubs(criteria=CRITERIA, verdict=lambda q, n: "no")
    values, _, _ = run(s.settings(loop={"max_rounds": 2}))
    assert len(s.gen.prompts) == 2 and values["final"]["round"] == 1


def test_empty_criteria_generates_once_from_original_prompt(stubs):
    s = stubs(criteria=[], route="spatial-layout", enhance="a much longer enhanced prompt")
    values, _, _ = run(s.settings())
    assert s.gen.prompts == ["a red cat on a mat"]
    assert values["success"] is None and values["final"]["total"] == 0  # nothing verified: no success claimed
    assert values["warnings"] == [
        "the decomposer found no criteria: one image from the request as written, not verified"
    ]
    assert s.script.calls["verify"] == 0 and values["final"]["image"]["sha256"]


def test_malformed_criteria_are_repaired_once(stubs):
    s = stubs(criteria="Sure! Here are the questions: 1. Is there a cat?", criteria_retry=CRITERIA)
    values, _, _ = run(s.settings())
    assert s.script.calls["decompose"] == 2
    assert values["criteria"] == CRITERIA
    assert "could not be read" in s.script.bodies["decompose"][1]["messages"][1]["content"]


def test_malformed_criteria_twice_is_a_clear_error(stubs):
    s = stubs(criteria="no idea", criteria_retry="still no idea")
    with pytest.raises(MLLMError, match="did not return a JSON list of questions after one retry"):
        run(s.settings())
    assert s.gen.prompts == []


def test_verifier_error_fails_that_criterion_and_the_run_goes_on(stubs):
    s = stubs(criteria=CRITERIA, fail_verify=("Is the cat on a mat?",))
    values, _, _ = run(s.settings(loop={"max_rounds": 2}))
    first = values["rounds"][0]
    assert first["failed"] == ["Is the cat on a mat?"]
    bad = [v for v in first["verdicts"] if not v["passed"]]
    assert bad and "HTTP 500" in bad[0]["error"]
    assert values["final"]["passed"] == 2 and len(values["rounds"]) == 2


def test_unclear_verdict_counts_as_fail(stubs):
    answers = {
        "Is there a cat?": "Yes, nothing is missing.",
        "Is the cat red?": "Not sure.",
        "Is the cat on a mat?": "no",
    }
    s = stubs(criteria=CRITERIA, verdict=lambda q, n: answers[q])
    values, _, _ = run(s.settings(loop={"max_rounds": 1}))
    assert values["rounds"][0]["passed"] == ["Is there a cat?"]
    unclear = values["rounds"][0]["verdicts"][1]
    assert unclear["error"] == "answer was neither yes nor no" and unclear["answer"] == "Not sure."


def test_skill_enhances_only_the_first_prompt_and_criteria_use_original(mllm_server, gen_server, isolated_env):
    mllm, script = mllm_server(
        criteria=CRITERIA,
        route="spatial-layout",
        enhance="Prompt: a red cat sits centred on a mat",
        verdict=passes_from_round(2),
    )
    gen = gen_server()
    values, _, _ = run(make_settings(mllm, gen, isolated_env))
    assert values["skill"] == "spatial-layout"
    assert values["skill_trace"]["loaded"] == ["spatial-layout"]
    assert gen.prompts[0] == "a red cat sits centred on a mat"
    # The body arrived only through the load_skill tool: the planner's first turn saw names and descriptions.
    assert "# Spatial layout" not in str(script.bodies["route"][0])
    tool_messages = [m for m in script.bodies["enhance"][0]["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 1 and "# Spatial layout" in tool_messages[0]["content"]
    # The decomposer saw the user's prompt, not the enhanced one.
    assert script.bodies["decompose"][0]["messages"][1]["content"] == "Request: a red cat on a mat"
    # The refiner never gets the skill text (paper behaviour).
    assert "# Spatial layout" not in str(script.bodies["refine"][0])


def test_router_reply_with_extra_text_means_no_skill(stubs):
    s = stubs(criteria=CRITERIA, route="I would pick spatial-layout because ...")
    values, _, _ = run(s.settings())
    assert values["skill"] is None and s.script.calls["enhance"] == 0
    assert s.gen.prompts[0] == "a red cat on a mat"


def test_refiner_sees_original_prompt_and_every_round(stubs):
    s = stubs(criteria=CRITERIA, verdict=passes_from_round(4), reasoning="I should say crimson.")
    values, _, _ = run(s.settings())
    third = s.script.bodies["refine"][2]["messages"][1]["content"]
    texts = "\n".join(p["text"] for p in third if p["type"] == "text")
    assert "a red cat on a mat" in texts
    for n in (1, 2, 3):
        assert f"## Attempt {n}" in texts
    assert texts.count("Lesson from this attempt") == 3
    assert sum(p["type"] == "image_url" for p in third) == 3
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in third if p["type"] == "image_url")
    # The refiner's reasoning_content became the next round's thought, and reached the compressor.
    assert values["rounds"][1]["thought"] == "I should say crimson."
    assert "I should say crimson." in str(s.script.bodies["compress"][1])


def test_generator_failure_is_clear_and_keeps_state(stubs):
    s = stubs(criteria=CRITERIA, gen=dict(fail_first=1))
    settings = s.settings()
    saver = InMemorySaver()
    with pytest.raises(GeneratorError, match=r"answered HTTP 500: model exploded"):
        run(settings, checkpointer=saver)
    graph = build_graph(checkpointer=saver)
    config = run_config(settings, "t1")
    state = graph.get_state(config)
    assert state.values["criteria"] == CRITERIA and state.next == ("generate",)
    # The server recovers; the same thread continues from the kept state without re-planning.
    graph.invoke(None, config, context=settings, durability="sync")
    assert graph.get_state(config).values["success"] is True


def test_human_review_pauses_before_generating_and_applies_edits(stubs):
    from langgraph.types import Command

    s = stubs(criteria=CRITERIA)
    settings = s.settings(loop={"human_review": True})
    graph = build_graph(checkpointer=InMemorySaver())
    config = run_config(settings, "r1")
    paused = graph.invoke({"prompt": "a red cat on a mat"}, config, context=settings)
    assert paused["__interrupt__"][0].value["criteria"] == CRITERIA and s.gen.prompts == []
    again = graph.invoke(Command(resume={"colour": "red"}), config, context=settings)
    assert "criteria and/or first_prompt" in again["__interrupt__"][0].value["error"]  # asked again, nothing lost
    assert graph.get_state(config).next == ("review",) and s.gen.prompts == []
    done = graph.invoke(Command(resume={"first_prompt": "a red cat, side view"}), config, context=settings)
    assert s.gen.prompts[0] == "a red cat, side view" and done["success"] is True
    assert done["criteria"] == CRITERIA


# ---- the efficient loop (loop.verify batched, loop.compress merged) ----------------------------------------------

EFFICIENT = {"verify": "batched", "compress": "merged"}


def by_image_prompt(q: str, made_from: str | None) -> str:
    """A consistent verifier: the colour passes from the second prompt on, the rest always."""
    return "no" if q == "Is the cat red?" and made_from == "a red cat on a mat" else "yes"


def test_the_efficient_loop_makes_the_same_choices_with_fewer_calls(stubs):
    paper = stubs(criteria=CRITERIA, verdict_by_image=by_image_prompt)
    slow, _, _ = run(paper.settings())
    lean = stubs(criteria=CRITERIA, verdict_by_image=by_image_prompt)
    fast, _, _ = run(lean.settings(loop=EFFICIENT))
    assert lean.gen.prompts == paper.gen.prompts and fast["final"] == slow["final"]
    assert [r["passed"] for r in fast["rounds"]] == [r["passed"] for r in slow["rounds"]]
    assert (paper.script.calls["verify"], paper.script.calls["compress"]) == (6, 1)  # 3 criteria x 2 rounds, 1 lesson
    assert (lean.script.calls["verify_batch"], lean.script.calls["verify"], lean.script.calls["compress"]) == (2, 0, 0)
    assert fast["rounds"][0]["experience"] == "Lesson: make the failed parts explicit."  # written by the refiner
    assert fast["mllm_calls"] == slow["mllm_calls"] - 5  # 6 verify + 1 compress became 2 batched verify calls
    batch = lean.script.bodies["verify_batch"][0]["messages"][-1]["content"]
    assert batch[0]["type"] == "image_url" and "1. Is there a cat?" in batch[1]["text"]  # the image first


def test_a_batched_answer_that_leaves_a_criterion_out_asks_it_alone(stubs):
    s = stubs(criteria=CRITERIA, verdict_by_image=by_image_prompt, batch_skip=("Is the cat on a mat?",))
    values, _, _ = run(s.settings(loop={**EFFICIENT, "max_rounds": 1}))
    asked_alone = [user_text(b) for b in s.script.bodies["verify"]]
    assert asked_alone == ["Question: Is the cat on a mat?"]  # never passed silently
    assert values["rounds"][0]["passed"] == ["Is there a cat?", "Is the cat on a mat?"] and values["mllm_calls"] == 4
