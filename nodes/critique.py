"""Verifier role and the critique step: one yes/no check per criterion in parallel, then the round's verdict."""

from __future__ import annotations

import asyncio
from typing import Any

from langgraph.runtime import Runtime

from gems.configs import GemsSettings, context_settings
from gems.memory.state import GemsState, RoundRecord, Verdict, VerifyTask
from gems.nodes.calls import ask, blocking
from gems.nodes.chat import round_message, run_links
from gems.nodes.mllm import MLLMError, image_part, text_part
from gems.nodes.parsing import parse_verdict, parse_verdicts
from gems.nodes.prompts.verify import VERIFY_BATCH_SYSTEM, VERIFY_BATCH_USER, VERIFY_SYSTEM, VERIFY_USER, numbered
from gems.nodes.runtime import artifact_store, timed, usage_update
from gems.skills.verifiers import VERIFIERS, VerifierUnavailable, combine


async def verify(task: VerifyTask, runtime: Runtime[GemsSettings]) -> dict[str, Any]:
    """Check one image: one criterion (the paper), or every criterion in one call (`loop.verify: batched`).

    An error or an unclear answer counts as a fail, never a crash. A batched answer that leaves a criterion out or
    unreadable is asked again for that criterion alone, so nothing passes silently.

    Args:
        task: the image reference and its criterion (with its index), or `criteria` for a batch.
        runtime: the run's settings as context.

    Returns:
        The `Verdict`s appended to `verdicts`, and counters.
    """
    settings = context_settings(runtime.context)
    timings: dict[str, float] = {}
    criteria = list(task.get("criteria") or [task["criterion"]])
    indexes = range(len(criteria)) if task.get("criteria") else [task["index"]]
    verdicts: list[Verdict] = []
    calls, usages = 0, list[dict[str, int]]()
    with timed(timings, "verify"):
        try:
            data_url = await blocking(artifact_store(settings).data_url, task["image"], settings.mllm.image_max_side)
        except (OSError, ValueError) as exc:  # the image is unreadable: every criterion fails, saying why
            verdicts = [_fail(task, i, q, str(exc)) for i, q in zip(indexes, criteria, strict=True)]
        else:
            if task.get("criteria"):
                verdicts, calls, usages = await _batch(task, criteria, data_url, settings)
            else:
                verdict, usage = await _one(task, task["index"], task["criterion"], data_url, settings)
                verdicts, calls, usages = [verdict], 1, [usage]
    for record in verdicts:
        # Tools the loaded skills bring (e.g. OCR for quoted text) check the same criterion; see skills/verifiers.py.
        if task.get("verifiers"):
            checks = await blocking(_tool_checks, task, record["criterion"], settings, timings)
            if checks:
                record["checks"] = checks
                record["mllm_passed"] = record["passed"]
                for check in checks:
                    record["passed"] = combine(record["passed"], check)
    return {"verdicts": verdicts, "mllm_calls": calls, "timings": timings, "usage": usage_update(*usages)}


def _verdict(
    task: VerifyTask, index: int, criterion: str, *, passed: bool = False, answer: str = "", error: str | None = None
) -> Verdict:
    return Verdict(round=task["round"], candidate=task["candidate"], index=index, criterion=criterion, passed=passed,
                   answer=answer[:500], error=error)  # fmt: skip


def _fail(task: VerifyTask, index: int, criterion: str, error: str) -> Verdict:
    return _verdict(task, index, criterion, error=error)


async def _one(
    task: VerifyTask, index: int, criterion: str, data_url: str, settings: GemsSettings
) -> tuple[Verdict, dict[str, int]]:
    """One criterion, one call: the paper's verifier."""
    try:
        reply = await ask(
            settings.mllm, VERIFY_SYSTEM, [text_part(VERIFY_USER.format(criterion=criterion)), image_part(data_url)]
        )
    except MLLMError as exc:
        return _fail(task, index, criterion, str(exc)), {}
    verdict = parse_verdict(reply.text)
    unclear = "answer was neither yes nor no" if verdict is None else None
    return _verdict(task, index, criterion, passed=verdict is True, answer=reply.text, error=unclear), reply.usage


async def _batch(
    task: VerifyTask, criteria: list[str], data_url: str, settings: GemsSettings
) -> tuple[list[Verdict], int, list[dict[str, int]]]:
    """Every criterion in one call (the image first, so a server's prefix cache reuses it); the ones the answer
    leaves out or unreadable are asked again one by one."""
    found: dict[int, tuple[bool, str]] = {}
    usages: list[dict[str, int]] = []
    calls = 1
    try:
        reply = await ask(
            settings.mllm,
            VERIFY_BATCH_SYSTEM,
            [image_part(data_url), text_part(VERIFY_BATCH_USER.format(questions=numbered(criteria)))],
        )
        found, usages = parse_verdicts(reply.text, len(criteria)), [reply.usage]
    except MLLMError:
        pass  # every criterion is asked alone below
    verdicts: list[Verdict] = []
    missing = [i for i in range(len(criteria)) if i + 1 not in found]
    again = await asyncio.gather(*(_one(task, i, criteria[i], data_url, settings) for i in missing))
    asked = dict(zip(missing, again, strict=True))
    for i, criterion in enumerate(criteria):
        if i in asked:
            verdict, usage = asked[i]
            verdicts.append(verdict)
            usages.append(usage)
            calls += 1
        else:
            passed, why = found[i + 1]
            said = ("yes" if passed else "no") + (f": {why}" if why else "")
            verdicts.append(_verdict(task, i, criterion, passed=passed, answer=said))
    return verdicts, calls, usages


def _tool_checks(
    task: VerifyTask, criterion: str, settings: GemsSettings, timings: dict[str, float]
) -> list[dict[str, Any]]:
    checks = []
    for name in task.get("verifiers") or []:
        tool = VERIFIERS.get(name)
        if tool is None:
            continue
        with timed(timings, f"verify_{name}"):
            try:
                path = artifact_store(settings).path_for(task["image"]["sha256"])
                result = tool(criterion, path)
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
