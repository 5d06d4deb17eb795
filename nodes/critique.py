"""Verifier role and the critique step: one yes/no check per criterion in parallel, then the round's verdict."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from gems.configs import GemsSettings, context_settings
from gems.memory.state import GemsState, RoundRecord, Verdict, VerifyTask
from gems.nodes.calls import ask, blocking
from gems.nodes.chat import round_message, run_links
from gems.nodes.mllm import MLLMError, image_part, text_part
from gems.nodes.parsing import parse_verdict
from gems.nodes.prompts.verify import VERIFY_SYSTEM, VERIFY_USER
from gems.nodes.runtime import artifact_store, timed, usage_update
from gems.skills.verifiers import VERIFIERS, VerifierUnavailable, combine


async def verify(task: VerifyTask, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Answer one criterion on one image; an error or an unclear answer counts as a fail, never a crash.

    Args:
        task: the criterion, its index, and the image reference (sent by `route_after_generate`).
        runtime: the run's settings as context.

    Returns:
        One `Verdict` appended to `verdicts`, and counters.
    """
    settings = context_settings(runtime.context)
    timings: dict[str, float] = {}
    usage: dict[str, int] = {}
    error: str | None = None
    answer = ""
    with timed(timings, "verify"):
        try:
            store = artifact_store(settings)
            data_url = await blocking(store.data_url, task["image"], settings.mllm.image_max_side)
            reply = await ask(
                settings.mllm,
                VERIFY_SYSTEM,
                [text_part(VERIFY_USER.format(criterion=task["criterion"])), image_part(data_url)],
            )
            answer, usage = reply.text, reply.usage
        except (MLLMError, OSError, ValueError) as exc:
            error = str(exc)
    verdict = parse_verdict(answer) if error is None else None
    record = Verdict(
        round=task["round"],
        candidate=task["candidate"],
        index=task["index"],
        criterion=task["criterion"],
        passed=verdict is True,
        answer=answer[:500],
        error=error if error is not None else (None if verdict is not None else "answer was neither yes nor no"),
    )
    # Tools the loaded skills bring (e.g. OCR for quoted text) check the same criterion; see skills/verifiers.py.
    checks = await blocking(_tool_checks, task, settings, timings) if task.get("verifiers") else []
    if checks:
        record["checks"] = checks
        record["mllm_passed"] = record["passed"]
        for check in checks:
            record["passed"] = combine(record["passed"], check)
    return {"verdicts": [record], "mllm_calls": 1, "timings": timings, "usage": usage_update(usage)}


def _tool_checks(task: VerifyTask, settings: GemsSettings, timings: dict[str, float]) -> list[dict[str, Any]]:
    checks = []
    for name in task.get("verifiers") or []:
        tool = VERIFIERS.get(name)
        if tool is None:
            continue
        with timed(timings, f"verify_{name}"):
            try:
                path = artifact_store(settings).path_for(task["image"]["sha256"])
                result = tool(task["criterion"], path)
            except VerifierUnavailable as exc:
                result = {"tool": name, "status": "unavailable", "error": str(exc)}
        if result is not None:
            checks.append(result)
    return checks


def _score(verdicts: list[Verdict], criteria: list[str]) -> tuple[list[str], list[str]]:
    passed_idx = {v["index"] for v in verdicts if v["passed"]}
    passed = [q for i, q in enumerate(criteria) if i in passed_idx]
    failed = [q for i, q in enumerate(criteria) if i not in passed_idx]
    return passed, failed


async def critique(state: GemsState, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Collect the round's verdicts into its factual record; with several candidates keep the best one.

    Args:
        state: `round`, `criteria`, `candidates`, `verdicts`, `current_prompt`, `thought`.
        runtime: the run's settings as context; its stream writer gets the round's `custom` event.

    Returns:
        The new `RoundRecord` (merged into `rounds` by round number) and the round's message for `messages`.
    """
    round_no = state["round"]
    criteria = state.get("criteria") or []
    candidates = state.get("candidates") or []
    this_round = [v for v in state.get("verdicts") or [] if v["round"] == round_no]
    best_c, best_passed, best_failed = 0, list[str](), list(criteria)
    for c in range(len(candidates)):
        mine = sorted((v for v in this_round if v["candidate"] == c), key=lambda v: v["index"])
        passed, failed = _score(mine, criteria)
        if c == 0 or len(passed) > len(best_passed):  # strict: the earliest candidate wins a tie
            best_c, best_passed, best_failed = c, passed, failed
    record = RoundRecord(
        round=round_no,
        prompt=state.get("current_prompt") or state["prompt"],
        thought=state.get("thought"),
        image=candidates[best_c] if candidates else {},
        passed=best_passed,
        failed=best_failed,
        verdicts=sorted((v for v in this_round if v["candidate"] == best_c), key=lambda v: v["index"]),
        experience=None,
    )
    if len(candidates) > 1:
        record["candidates"] = candidates
    record.update(_lineage(state, round_no, best_passed, best_failed))
    links = await run_links(context_settings(runtime.context))
    turn = len(state.get("turns") or []) + 1
    # For UIs that draw their own progress: one event per round, as soon as its verdicts are in.
    runtime.stream_writer(
        {"event": "round", "round": round_no, "image_url": links.image(record["image"]) if candidates else None,
         "passed": len(best_passed), "total": len(criteria), "mode": record.get("mode")}
    )  # fmt: skip
    return {"rounds": [record], "messages": [round_message(turn, record, criteria, links)]}


def _lineage(state: GemsState, round_no: int, passed: list[str], failed: list[str]) -> RoundRecord:
    """How the round was made, and which criteria it kept, fixed and broke versus its base.

    An edit's base is the image it edited; a new generation is compared with the round before it, so runs in
    either refine mode report the same three counts.
    """
    action = state.get("action") or {}
    mine = action.get("round") == round_no
    out = RoundRecord(mode="edit" if mine and action.get("mode") == "edit" else "generate")
    if mine and action.get("reason"):
        out["reason"] = action["reason"]
    if out["mode"] == "edit":
        out["instruction"] = state.get("current_prompt") or ""
        out["base_image"] = action.get("base_image") or {}
        base_round: int | None = action.get("base_round")
    else:
        base_round = round_no - 1 if round_no > 1 else None
    out["base_round"] = base_round
    base = next((r for r in state.get("rounds") or [] if r.get("round") == base_round), None)
    if base is not None:
        had = set(base.get("passed") or [])
        out["kept"] = [q for q in passed if q in had]
        out["fixed"] = [q for q in passed if q not in had]
        out["broken"] = [q for q in failed if q in had]
    return out
