"""Each role's rendered prompt on a fixed state, against a reviewed snapshot in tests/snapshots/prompts/.

A wording change fails here until the snapshot is updated: `UPDATE_SNAPSHOTS=1 pytest tests/test_prompts.py`,
then the diff of `tests/snapshots/prompts/*.txt` is what reviewers read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from gems.configs import GemsSettings
from gems.graph import build_graph, run_config
from gems.memory.artifacts import ArtifactStore
from gems.nodes.prompts import format_lessons, skill_block
from gems.nodes.prompts import plan as plan_prompts
from gems.nodes.prompts.compress import COMPRESS_SYSTEM, compressor_parts
from gems.nodes.prompts.decompose import DECOMPOSE_SYSTEM, DECOMPOSE_USER, REPAIR_USER
from gems.nodes.prompts.evolve import propose_system, propose_user
from gems.nodes.prompts.intake import FOLLOW_UP_SYSTEM, FOLLOW_UP_USER
from gems.nodes.prompts.refine import (
    CHOOSE_ASK,
    CHOOSE_SYSTEM,
    EDIT_ASK,
    EDIT_SYSTEM,
    MERGED_LABELS,
    MERGED_LESSON,
    refine_system,
    refiner_parts,
)
from gems.nodes.prompts.rewrite import REWRITE_SYSTEM
from gems.nodes.prompts.verify import VERIFY_BATCH_SYSTEM, VERIFY_BATCH_USER, VERIFY_SYSTEM, VERIFY_USER, numbered
from tests.support.servers import png_bytes, role_of

SNAPSHOTS = Path(__file__).parent / "snapshots" / "prompts"
REQUEST = 'three red apples left of a blue vase, a sign reading "FRESH"'
LESSONS = [{"brief": "Counts held when the number was written as a word and repeated (outcome: success, 3/3)"}]
SKILL = SimpleNamespace(name="counting", body="Say the number twice and name each object once.")
MANIFEST = "- counting: exact numbers of objects\n- text-rendering: quoted text on signs"


def _state(store: ArtifactStore) -> dict[str, Any]:
    image = store.put_bytes(png_bytes((200, 30, 30)), backend="http", model="stub", seed=7, candidate=0)
    return {
        "prompt": REQUEST,
        "lessons": LESSONS,
        "rounds": [
            {"round": 1, "prompt": "three red apples and a vase", "thought": "keep it short", "image": image,
             "passed": ["Are there three apples?"], "failed": ["Is the vase blue?", 'Does the sign read "FRESH"?'],
             "experience": "The vase colour was lost; name it right after the vase."},
            {"round": 2, "prompt": "three red apples, a blue vase on their right", "thought": None, "image": image,
             "passed": ["Are there three apples?", "Is the vase blue?"], "failed": ['Does the sign read "FRESH"?']},
        ],
    }  # fmt: skip


def _text(parts: list[dict[str, Any]] | str) -> str:
    if isinstance(parts, str):
        return parts
    return "\n".join(p["text"] if p["type"] == "text" else "[image]" for p in parts)


def _rendered(tmp_path: Path) -> dict[str, str]:
    store = ArtifactStore(tmp_path / "artifacts")
    state = _state(store)
    settings = GemsSettings(data_dir=tmp_path)
    lessons = format_lessons(LESSONS)
    edited = {**state, "rounds": [state["rounds"][0], {**state["rounds"][1], "mode": "edit", "base_round": 1}]}
    roles = {
        "planner": (
            plan_prompts.PLANNER_SYSTEM.format(max_active=1, manifest=MANIFEST, lessons=lessons),
            plan_prompts.PLANNER_USER.format(prompt=REQUEST),
        ),
        "router": (
            plan_prompts.ROUTER_SYSTEM,
            plan_prompts.ROUTER_USER.format(manifest=MANIFEST, lessons=lessons, prompt=REQUEST),
        ),
        "enhancer": (
            plan_prompts.ENHANCE_SYSTEM.format(skills=skill_block([SKILL])),
            plan_prompts.ENHANCE_USER.format(lessons=lessons.lstrip("\n"), prompt=REQUEST),
        ),
        "decomposer": (DECOMPOSE_SYSTEM, DECOMPOSE_USER.format(prompt=REQUEST)),
        "decomposer-repair": (DECOMPOSE_SYSTEM, REPAIR_USER.format(prompt=REQUEST, bad="1. Is there an apple?")),
        "verifier": (VERIFY_SYSTEM, VERIFY_USER.format(criterion="Is the vase blue?") + "\n[image]"),
        "compressor": (COMPRESS_SYSTEM.format(max_words=100), _text(compressor_parts(state, settings, store))),
        "refiner": (refine_system([]), _text(refiner_parts(state, settings, store))),
        "refiner-with-skill": (refine_system([SKILL]), "(same user message as refiner)"),
        # refine_mode edit: round 3 edits round 2's image; the history shows an earlier edit round as such.
        "refiner-edit": (EDIT_SYSTEM, _text(refiner_parts(edited, settings, store, edited["rounds"][1], EDIT_ASK))),
        "refiner-choose": (CHOOSE_SYSTEM, _text(refiner_parts(state, settings, store, state["rounds"][1], CHOOSE_ASK))),
        "rewrite": (REWRITE_SYSTEM, REQUEST),
        "follow-up": (FOLLOW_UP_SYSTEM, FOLLOW_UP + "\n[image]"),
        "verifier-batched": (
            VERIFY_BATCH_SYSTEM,
            "[image]\n"
            + VERIFY_BATCH_USER.format(questions=numbered(["Are there three apples?", "Is the vase blue?"])),
        ),
        "refiner-merged": (
            refine_system([]) + MERGED_LESSON.format(max_words=100, label=MERGED_LABELS["regenerate"]),
            "(same user message as refiner)",
        ),
        "skill-proposer": (
            propose_system(3),
            propose_user(
                {"counting": "---\nname: counting\n...\n---\n# Counting"},
                ['Request: "three red apples". Hard to satisfy: Are there three apples?'],
                [{"label": "delete counting", "rationale": "unused", "reason": "test score -2.00 points"}],
            ),
        ),
    }
    return {role: f"=== system ===\n{system}\n=== user ===\n{user}\n" for role, (system, user) in roles.items()}


QUESTIONS = ["Are there three apples?", "Is the vase blue?"]
FOLLOW_UP = FOLLOW_UP_USER.format(
    previous=REQUEST, passed="- Are there three apples?", failed="- Is the vase blue?", message="now make the vase blue"
)
ROLES = ["planner", "router", "enhancer", "decomposer", "decomposer-repair", "verifier", "compressor", "refiner",
         "refiner-with-skill", "refiner-edit", "refiner-choose", "rewrite", "skill-proposer", "follow-up",
         "verifier-batched", "refiner-merged"]  # fmt: skip


@pytest.mark.parametrize("role", ROLES)
def test_prompt_snapshot(role, tmp_path):
    text = _rendered(tmp_path)[role]
    path = SNAPSHOTS / f"{role}.txt"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no snapshot for {role}: run UPDATE_SNAPSHOTS=1 pytest tests/test_prompts.py"
    assert text == path.read_text(encoding="utf-8"), f"{role}'s prompt changed; update the snapshot if intended"


def test_lessons_block_is_shared_and_absent_without_lessons(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    state = _state(store)
    settings = GemsSettings(data_dir=tmp_path)
    assert format_lessons([]) == "" and format_lessons(LESSONS) in _text(refiner_parts(state, settings, store))
    state["lessons"] = []
    assert "Lessons from similar earlier requests" not in _text(refiner_parts(state, settings, store))


@pytest.mark.parametrize("route", ["NONE", "counting"], ids=["no-skill", "skill"])
def test_one_request_sends_the_calls_it_always_sent(stubs, route):
    """The MLLM calls of a single request (count and every text, images included) and its final choice, against a
    reviewed snapshot: the chat surface, the planner subgraph and the async nodes must not change the loop."""
    s = stubs(criteria=["Is there a cat?", "Is the cat red?", "Is it on a mat?"],
              verdict=lambda q, n: "yes" if q != "Is the cat red?" or n >= 3 else "no", route=route,
              reasoning="thinking")  # fmt: skip
    settings = s.settings(loop={"seed": 7})
    out = build_graph(checkpointer=InMemorySaver()).invoke(
        {"prompt": "a red cat on a mat"}, run_config(settings, "t"), context=settings
    )
    calls = sorted(
        (role_of(r["body"]), json.dumps(r["body"]["messages"], sort_keys=True),
         sorted(t["function"]["name"] for t in r["body"].get("tools", [])))
        for r in s.mllm.requests
    )  # fmt: skip
    record = {"calls": calls, "final": [out["final"]["round"], out["final"]["passed"]], "generated": s.gen.prompts}
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    path = SNAPSHOTS.parent / f"calls-one-request-{route.lower()}.json"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no snapshot {path.name}: run UPDATE_SNAPSHOTS=1 pytest tests/test_prompts.py"
    assert text == path.read_text(encoding="utf-8"), "the calls of one request changed; update it if intended"
