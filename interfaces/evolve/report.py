"""`DIR/report.md` and `DIR/report.html` of `gems skills evolve`: every proposal, its diff, scores and cost."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gems.interfaces.benchmarks.report import md_text
from gems.interfaces.pages import render_template
from gems.skills.registry import MAX_NAME

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


# The library side's name line (`Proposal.name` reads the same lines) and the reason it gives when none is valid.
_NAME_LINE = re.compile(r"^name:[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_NO_VALID_NAME = "the SKILL.md has no valid name: line"
NAME_RULE = (
    f"a skill name is 1-{MAX_NAME} lowercase letters, digits and hyphens, with no hyphen first, last or twice in a "
    "row (e.g. red-emphasis)"
)


def written_name(skill_md: str) -> str | None:
    """The name as the SKILL.md's `name:` line writes it, without the quotes around it (None: no such line)."""
    match = _NAME_LINE.search(skill_md or "")
    if match is None:
        return None
    name = match.group(1)
    return name[1:-1] if len(name) > 1 and name[0] == name[-1] and name[0] in "'\"" else name


def name_problem(name: str | None) -> str:
    """What is wrong with a SKILL.md's name, in words: no name line, an empty one, or what in it breaks the rule."""
    if name is None:
        return f"the SKILL.md has no name: line in its front matter; {NAME_RULE}"
    if not name:
        return f"the SKILL.md's name: line is empty; {NAME_RULE}"
    upper = sorted({c for c in name if c.isupper()})
    other = sorted({c for c in name if not (c.isupper() or c == "-" or (c.isascii() and c.isalnum()))})
    found = [f"uppercase letters ({' '.join(upper)})"] if upper else []
    found += ["spaces" if c == " " else repr(c) for c in other]
    if name.startswith("-") or name.endswith("-") or "--" in name:
        found.append("a hyphen first, last or twice in a row")
    if len(name) > MAX_NAME:
        found.append(f"{len(name)} characters")
    return f"the name {name!r} is not a valid skill name: it has {', '.join(found) or 'quotes'}; {NAME_RULE}"


def proposal_label(entry: dict[str, Any]) -> str:
    """`create red-emphasis`; a proposal whose SKILL.md has no valid name is labelled by the name as written, quoted
    (or `(no name: line)`), never `None`."""
    label = str(entry.get("label") or "")
    if entry.get("op") not in ("create", "merge") or "name" not in entry or entry["name"] is not None:
        return label
    written = written_name(entry.get("skill_md") or "")
    shown = "(no name: line)" if written is None else f'"{written}"'
    targets = " + ".join(entry.get("targets") or [])
    return f"create {shown}" if entry["op"] == "create" else f"merge {targets} -> {shown}"


def proposal_reason(entry: dict[str, Any]) -> str:
    """The decision's reason; for a SKILL.md without a valid name, which rule its name line breaks."""
    reason = str(entry.get("reason") or "")
    if entry.get("decision") == "invalid" and reason.startswith(_NO_VALID_NAME):
        return name_problem(written_name(entry.get("skill_md") or ""))
    return reason


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
            "label": proposal_label(e),
            "reason": proposal_reason(e),
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
