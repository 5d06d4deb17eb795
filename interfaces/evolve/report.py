"""`DIR/report.md` and `DIR/report.html` of `gems skills evolve`: every proposal, its diff, scores and cost."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gems.interfaces.benchmarks.report import md_text
from gems.interfaces.pages import render_template

COST_KEYS = ("mllm_calls", "input_tokens", "output_tokens", "generator_calls", "generator_busy_s", "judge_calls")


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _delta(entry: dict[str, Any]) -> float | None:
    before, after = (entry.get("before") or {}).get("score"), (entry.get("after") or {}).get("score")
    return None if before is None or after is None else after - before


def category_rows(entry: dict[str, Any]) -> list[list[str]]:
    """Per category: before, after, change (the after run's categories; scores 0-100)."""
    before = (entry.get("before") or {}).get("by_category") or {}
    after = (entry.get("after") or {}).get("by_category") or {}
    rows = []
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        change = None if a is None or b is None else a - b
        rows.append([name, _num(b), _num(a), "-" if change is None else f"{change:+.2f}"])
    return rows


def cost_text(entry: dict[str, Any]) -> str:
    """What trying the proposal cost: the test run with the change (the baseline is shared), plus the proposer."""
    cost = (entry.get("after") or {}).get("cost") or {}
    parts = [f"{k} {cost[k]:g}" for k in COST_KEYS if cost.get(k)]
    usage = entry.get("usage") or {}
    if usage:
        parts.append(f"proposer tokens {usage.get('input_tokens', 0):g} in / {usage.get('output_tokens', 0):g} out")
    wall = (entry.get("after") or {}).get("wall_s")
    if wall:
        parts.append(f"{wall:.1f}s")
    return ", ".join(parts) or "not run"


def _metric(entries: list[dict[str, Any]]) -> str:
    for entry in entries:
        metric = (entry.get("after") or entry.get("before") or {}).get("metric")
        if metric:
            return str(metric)
    return "the bench's scorer"


def _fenced(lang: str, text: str) -> list[str]:
    """A code block no backtick run in `text` can close early."""
    runs = [len(run) for run in re.findall(r"`+", text)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return [fence + lang, text, fence]


INTRO = (
    "Scores: {metric}, 0-100, on the held-out test prompts with the same seeds before and after each change. A change "
    "is kept only when the score rises by the margin and no category falls by more than the allowed drop."
)
REVERTED = "Accepted changes undone later (never proposed again unchanged)"
UNREADABLE = "Proposer answers that could not be read"


def report_view(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """What both reports show, computed once: every proposal with its scores and reason, changes undone later,
    answers that could not be read, and why the table is empty when it is."""
    proposals = []
    for e in (e for e in entries if e.get("id")):
        delta = _delta(e)
        proposals.append({
            **e,
            "before_text": _num((e.get("before") or {}).get("score")),
            "after_text": _num((e.get("after") or {}).get("score")),
            "delta_text": "-" if delta is None else f"{delta:+.2f}",
            "label": str(e.get("label") or ""),
            "reason": str(e.get("reason") or ""),
            "rows": category_rows(e),
            "cost": cost_text(e),
        })  # fmt: skip
    reverted = [e for e in entries if e.get("decision") == "reverted"]
    unreadable = [e for e in entries if e.get("decision") == "unreadable"]
    empty = None
    if not proposals and unreadable:
        empty = (
            f"No proposal was tried: the proposer's answer could not be read in {len(unreadable)} round(s); "
            "the reasons are below."
        )
    elif not proposals:
        empty = "No proposal was tried: the proposer suggested no change, or the cycle stopped before one was tried."
    return {
        "intro": INTRO.format(metric=_metric(proposals)),
        "proposals": proposals,
        "reverted": reverted,
        "unreadable": unreadable,
        "empty": empty,
    }


def report_markdown(entries: list[dict[str, Any]]) -> str:
    """The report in Markdown; every text from the proposer, the prompt file or an error is escaped (`md_text`), so
    it reads as report.html shows it."""
    view = report_view(entries)
    lines = ["# gems skills evolve", "", view["intro"], ""]
    if view["empty"]:
        lines.append(view["empty"])
    else:
        lines += [
            "| id | change | decision | before | after | change in score | why |",
            "|---|---|---|---|---|---|---|",
        ]
    for p in view["proposals"]:
        lines.append(
            f"| {md_text(p['id'])} | {md_text(p['label'])} | **{md_text(p.get('decision'))}** | {p['before_text']} | "
            f"{p['after_text']} | {p['delta_text']} | {md_text(p['reason'])} |"
        )
    for p in view["proposals"]:
        lines += ["", f"## {md_text(p['id'])}: {md_text(p['label'])} ({md_text(p.get('decision'))})", ""]
        lines.append(f"- rationale: {md_text(p.get('rationale') or '-')}")
        for text in p.get("lesson_texts") or []:
            lines.append(f"- from lesson {md_text(text)}")
        lines.append(f"- decision: {md_text(p.get('decision'))}: {md_text(p['reason'])}")
        lines.append(f"- cost: {md_text(p['cost'])}")
        if p["rows"]:
            lines += ["", "| category | before | after | change |", "|---|---|---|---|"]
            lines += [f"| {' | '.join(md_text(cell) for cell in row)} |" for row in p["rows"]]
        if p.get("diff"):
            lines += ["", *_fenced("diff", p["diff"].rstrip("\n"))]
        elif p.get("op") != "delete" and p.get("skill_md"):
            lines += ["", "Proposed SKILL.md (not applied):", "", *_fenced("markdown", p["skill_md"].strip())]
    if view["reverted"]:
        lines += ["", f"## {REVERTED}", ""]
        lines += [
            f"- {md_text(e.get('reverted_id'))} {md_text(e.get('label'))}: {md_text(e.get('reason'))}"
            for e in view["reverted"]
        ]
    if view["unreadable"]:
        lines += ["", f"## {UNREADABLE}", ""]
        lines += [
            f"- cycle {e.get('cycle')} round {e.get('round')}: {md_text(e.get('reason'))}" for e in view["unreadable"]
        ]
    return "\n".join(lines) + "\n"


def _diff_lines(diff: str) -> list[dict[str, str]]:
    kinds = {"+": "add", "-": "del", "@": "hunk"}
    return [
        {"text": line, "kind": "file" if line.startswith(("+++", "---")) else kinds.get(line[:1], "")}
        for line in diff.splitlines()
    ]


def report_html(entries: list[dict[str, Any]]) -> str:
    view = report_view(entries)
    for p in view["proposals"]:
        p["diff_lines"] = _diff_lines(p.get("diff") or "")
    return render_template("evolve.html.j2", **view, reverted_title=REVERTED, unreadable_title=UNREADABLE)


def write_reports(out: Path, entries: list[dict[str, Any]]) -> None:
    (out / "report.md").write_text(report_markdown(entries), encoding="utf-8")
    (out / "report.html").write_text(report_html(entries), encoding="utf-8")
