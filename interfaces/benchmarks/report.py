"""Bench reports: `summary.json`, `report.md` and a self-contained `report.html` gallery.

Every number says what it is: GenEval2's Soft-TIFA tables on the official 0-100 scale, or the loop's own verdict
labelled "self-check (not the benchmark's metric)", or no score at all (export and run the official script).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from statistics import mean
from typing import Any

from gems.interfaces.benchmarks.scoring import SELF_CHECK_LABEL, SOFT_TIFA_LABEL, judge_note
from gems.interfaces.pages import Table, copied_beside, cost_line, gallery_item, render_gallery

# Additive costs: their total is meaningful. Per-prompt `wall_s` overlaps under concurrency, so only its mean is
# shown; the run's real elapsed time is the summary's `wall_s`. Per prompt means per prompt, not per image: a prompt
# of N images (GenEval's 4, DPG's 4) costs what its N images cost together.
COST_KEYS = ("mllm_calls", "input_tokens", "output_tokens", "image_parts", "generator_calls", "generator_busy_s",
             "judge_calls", "judge_input_tokens", "judge_output_tokens")  # fmt: skip
SKILL_ORDER = ("object", "attribute", "count", "position", "verb")  # soft_tifa_analysis.py's order


# ---- numbers ----


def round_pass_rates(records: list[dict[str, Any]], max_rounds: int) -> list[float | None]:
    """Mean criteria pass rate at each round (the paper's Fig. 5); a prompt that stopped keeps its last rate."""
    per_round: list[list[float]] = [[] for _ in range(max_rounds)]
    for record in records:
        rounds = record.get("rounds") or []
        total = len(record.get("criteria") or [])
        if not total or not rounds:
            continue
        rates = [len(r.get("passed") or []) / total for r in rounds]
        for i in range(max_rounds):
            per_round[i].append(rates[min(i, len(rates) - 1)])
    return [round(mean(v), 4) if v else None for v in per_round]


def round_changes(records: list[dict[str, Any]], max_rounds: int) -> dict[str, Any]:
    """Criteria kept, fixed and broken per round versus each round's base (edits: the edited image; new images: the
    round before), summed over prompts, per round and per mode. `keep_rate` = kept / (kept + broken): how much of
    what passed survived the round (the edit-mode goal is >= 0.95)."""

    def tally() -> dict[str, Any]:
        return {"rounds": 0, "edits": 0, "kept": 0, "fixed": 0, "broken": 0}

    per_round = [tally() for _ in range(max(max_rounds - 1, 0))]
    by_mode = {"edit": tally(), "generate": tally()}
    for record in records:
        for r in record.get("rounds") or []:
            if "kept" not in r or not 2 <= r.get("round", 0) <= max_rounds:
                continue
            mode = "edit" if r.get("mode") == "edit" else "generate"
            for bucket in (per_round[r["round"] - 2], by_mode[mode]):
                bucket["rounds"] += 1
                bucket["edits"] += mode == "edit"
                for key in ("kept", "fixed", "broken"):
                    bucket[key] += len(r.get(key) or [])
    for bucket in [*per_round, *by_mode.values()]:
        had = bucket["kept"] + bucket["broken"]
        bucket["keep_rate"] = round(bucket["kept"] / had, 4) if had else None
    return {"label": SELF_CHECK_LABEL, "per_round": per_round, "by_mode": by_mode}


def soft_tifa_tables(scored: list[dict[str, Any]]) -> dict[str, Any]:
    """GenEval2's numbers on its 0-100 scale, as evaluation.py and soft_tifa_analysis.py compute them.

    `soft_tifa_gm` / `soft_tifa_am`: 100 x the mean over prompts of each prompt's GM / AM of atom probabilities.
    `by_skill`: per skill, 100 x the AM over every atom with that skill. `by_atom_count`: per atom count,
    100 x the mean of the prompts' GMs, in numeric order.
    """
    gms = [r["score"]["gm"] for r in scored]
    ams = [r["score"]["am"] for r in scored]
    skill_sum: dict[str, float] = {}
    skill_n: dict[str, int] = {}
    by_count: dict[int, list[float]] = {}
    for record in scored:
        probs = [a["p"] for a in record["score"]["atoms"]]
        for skill, p in zip(record.get("atom_skills") or [], probs, strict=False):
            skill_sum[skill] = skill_sum.get(skill, 0.0) + p
            skill_n[skill] = skill_n.get(skill, 0) + 1
        if record.get("atom_count") is not None:
            by_count.setdefault(int(record["atom_count"]), []).append(record["score"]["gm"])
    skills = [s for s in SKILL_ORDER if s in skill_n] + sorted(set(skill_n) - set(SKILL_ORDER))
    return {
        "scores": {"soft_tifa_gm": 100 * sum(gms) / len(gms), "soft_tifa_am": 100 * sum(ams) / len(ams)},
        "by_skill": {s: {"soft_tifa_am": 100 * skill_sum[s] / skill_n[s], "atoms": skill_n[s]} for s in skills},
        "by_atom_count": {
            str(n): {"soft_tifa_gm": 100 * sum(v) / len(v), "prompts": len(v)} for n, v in sorted(by_count.items())
        },
    }


def self_check_tables(scored: list[dict[str, Any]]) -> dict[str, Any]:
    """The loop's own pass rate (0-100), overall and per category: a self-check, not a benchmark's metric."""
    values = [r for r in scored if r["score"].get("self_check") is not None]
    by_category: dict[str, list[float]] = {}
    for record in values:
        for category in record.get("categories") or ["all"]:
            by_category.setdefault(category, []).append(record["score"]["self_check"])
    return {
        "scores": {"self_check": 100 * mean(r["score"]["self_check"] for r in values)} if values else {},
        "by_category": {k: {"self_check": 100 * mean(v), "prompts": len(v)} for k, v in sorted(by_category.items())},
    }


def build_summary(records: list[dict[str, Any]], *, run: dict[str, Any], prompts: int, errors: list[str]) -> dict:
    """The run's numbers: the scorer's own tables, the loop's self-check figures, cost and time.

    `records` are images (`run["images_per_prompt"]` per prompt); `prompts` is how many prompts the run selected.
    """
    scorer = run.get("scorer")
    per_prompt_images = int(run.get("images_per_prompt") or 1)
    images = prompts * per_prompt_images
    # Only this run's scorer: results from different scorers are never averaged together.
    scoring = scorer not in (None, "none")
    scored = [r for r in records if scoring and r.get("scorer") == scorer and isinstance(r.get("score"), dict)]
    complete = scoring and len(scored) == images
    samples = Counter(str(r.get("id")) for r in records)
    tables: dict[str, Any] = {}
    if scored:
        tables = soft_tifa_tables(scored) if scorer == "soft-tifa" else self_check_tables(scored)
    checked = [r for r in records if r.get("criteria")]
    costs = {key: round(sum((r.get("cost") or {}).get(key, 0) or 0 for r in records), 4) for key in COST_KEYS}
    # The finished images in prompts' worth (a prompt with some of its images finished counts that share of one).
    prompts_done = len(records) / per_prompt_images
    per_prompt = {k: round(v / prompts_done, 4) for k, v in costs.items()} if records else {}
    if records:  # the prompt's images' run times added (each overlaps other prompts' under concurrency)
        wall = sum((r.get("cost") or {}).get("wall_s", 0) or 0 for r in records)
        per_prompt["wall_s"] = round(wall / prompts_done, 4)
    lessons = run.get("lessons") or {}
    max_rounds = ((run.get("config") or {}).get("loop") or {}).get("max_rounds", 5)
    return {
        "dataset": run.get("dataset"),
        "method": run.get("method"),
        "scorer": scorer,
        "metric": {"soft-tifa": SOFT_TIFA_LABEL, "verifier": SELF_CHECK_LABEL}.get(scorer or ""),
        "judge": judge_note((run.get("config") or {}).get("judge")) if scorer == "soft-tifa" else None,
        "prompts": prompts,
        "images": images,
        "shard": run.get("shard"),
        "selected": (run.get("selection") or {}).get("k"),  # the selection's prompts, before sharding
        "finished": sum(1 for n in samples.values() if n >= per_prompt_images),  # prompts with every image
        "finished_images": len(records),
        "scored": len(scored),  # images
        "errors": errors,
        # The official scripts need every prompt: a partial mean is kept apart and labelled.
        "scores": tables.get("scores") if complete else None,
        "partial_scores": None if complete or not scored else tables.get("scores"),
        "by_skill": tables.get("by_skill", {}),
        "by_atom_count": tables.get("by_atom_count", {}),
        "by_category": tables.get("by_category", {}),
        "self_check": {
            "label": SELF_CHECK_LABEL,
            "success_rate": round(mean(1.0 if r.get("success") else 0.0 for r in checked), 4) if checked else None,
            "round_pass_rate": round_pass_rates(records, max_rounds),
            "round_changes": round_changes(records, max_rounds),
        },
        "rounds_used": round(mean(len(r.get("rounds") or []) for r in records), 3) if records else None,
        "lessons": {"enabled": bool(lessons.get("enabled")), "store": lessons.get("store")},
        "cost_total": costs,
        "cost_per_prompt": per_prompt,
        "wall_s": run.get("wall_s"),
    }


# ---- text ----


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}"


# What Markdown would read as markup in running text: a table cell's end, HTML, code, emphasis (an `_` inside a word
# is not), strike-through and links; and an `&` that starts an entity.
_MARKUP = re.compile(r"[\\`*|<~\[\]]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|&(?=#?\w+;)")


def md_text(value: Any) -> str:
    """Text from a prompt file, a model, a proposer or an error in Markdown, reading as written (as the HTML page
    shows it): one line, each markup character backslash-escaped."""
    return _MARKUP.sub(lambda m: "\\" + m.group(0), " ".join(str(value).split()))


def empty_shard(summary: dict[str, Any]) -> str:
    """Why a run holds no prompts, and what to do: a shard of a selection with fewer prompts than shards."""
    shard, selected = summary.get("shard"), summary.get("selected")
    if not shard:
        return "the selection holds no prompts"
    n = int(str(shard).split("/")[1])
    fewer = "more shards than prompts" if selected is None else f"the selection has {selected} prompt(s) for {n} shards"
    fix = f"use at most {selected} shard(s) (--shard K/{selected})" if selected else "use fewer shards"
    return (
        f"shard {shard} holds no prompts: {fewer}, so some shards get none. Nothing to run or score here; {fix}, or "
        "merge this folder with the other shards as it is"
    )


def wall_line(summary: dict[str, Any]) -> str:
    """The run's real elapsed time, labelled (a merge of shards that ran side by side: the slowest shard's)."""
    where = f"the slowest of {summary['shards']} shards, all sessions" if summary.get("shards") else "all sessions"
    return f"wall time: {_fmt(summary['wall_s'])} s in all (real elapsed, {where})"


def headline(summary: dict[str, Any]) -> str:
    """One line saying what the number is: the benchmark's metric, a labelled self-check, or none."""
    scores, partial, scorer = summary.get("scores"), summary.get("partial_scores"), summary.get("scorer")
    if not summary.get("prompts"):
        return empty_shard(summary)
    if scorer in (None, "none"):
        return "no score computed (--scorer none): export the images (gems bench export) and run the benchmark's script"
    label = summary.get("metric")
    if scores is None:
        shown = (
            "; partial (not comparable): " + ", ".join(f"{k} {_num(v)}" for k, v in partial.items()) if partial else ""
        )
        images = summary.get("images", summary["prompts"])
        unit = "prompts" if images == summary["prompts"] else "images"
        return f"{label}: incomplete, {summary['scored']} of {images} {unit} scored{shown}"
    if scorer == "soft-tifa":
        return f"{label}: soft_tifa_gm {_num(scores['soft_tifa_gm'])}, soft_tifa_am {_num(scores['soft_tifa_am'])}"
    return f"{label}: {_num(scores.get('self_check'))}% of criteria passed by the final images"


def changes_table(check: dict[str, Any]) -> Table:
    """Kept / fixed / broken per round and per mode, as (title, header, rows)."""
    changes = check.get("round_changes") or round_changes([], 0)
    header = ["round", "rounds", "edits", "kept", "fixed", "broken", "keep_rate"]

    def row(name: str, b: dict[str, Any]) -> list[str]:
        return [name, *(str(b[k]) for k in header[1:-1]), _fmt(b["keep_rate"])]

    rows = [row(str(i + 2), b) for i, b in enumerate(changes["per_round"])]
    rows += [row(f"all {mode}", b) for mode, b in changes["by_mode"].items() if b["rounds"]]
    title = f"Criteria kept, fixed and broken versus each round's base, {changes['label']}"
    return title, header, rows


def score_tables(summary: dict[str, Any]) -> list[Table]:
    """The per-skill, per-atom-count and per-category tables as (title, header, rows), for Markdown and HTML."""
    tables: list[Table] = []
    if summary["by_skill"]:
        rows = [[k, _num(v["soft_tifa_am"]), str(v["atoms"])] for k, v in summary["by_skill"].items()]
        tables.append(("Soft-TIFA AM per skill (over atoms)", ["skill", "soft_tifa_am", "atoms"], rows))
    if summary["by_atom_count"]:
        rows = [[k, _num(v["soft_tifa_gm"]), str(v["prompts"])] for k, v in summary["by_atom_count"].items()]
        tables.append(("Soft-TIFA GM per atom count", ["atoms", "soft_tifa_gm", "prompts"], rows))
    if summary["by_category"]:
        rows = [[k, _num(v["self_check"]), str(v["prompts"])] for k, v in summary["by_category"].items()]
        tables.append((f"{summary['metric']} per category", ["category", "self_check", "prompts"], rows))
    return tables


def _markdown_table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(md_text(cell) for cell in row) + " |" for row in rows), ""]


def _lessons_line(summary: dict[str, Any]) -> str:
    lessons = summary["lessons"]
    if lessons["enabled"]:
        return f"on (store {lessons['store']}; each prompt may use lessons of earlier ones, so order matters)"
    return "off (the paper's method: nothing carried between prompts)"


def report_markdown(summary: dict[str, Any]) -> str:
    check = summary["self_check"]
    rates = check["round_pass_rate"]
    lines = [
        f"# gems bench: {summary['method']} on {summary['dataset']}",
        "",
        f"- **{headline(summary)}**",
        *([f"- judge: {md_text(summary['judge'])}"] if summary.get("judge") else []),
        f"- prompts: {summary['finished']}/{summary['prompts']} finished"
        + (
            f" ({summary['finished_images']}/{summary['images']} images)"
            if summary["images"] != summary["prompts"]
            else ""
        )
        + (f", {len(summary['errors'])} failed" if summary["errors"] else ""),
        f"- cross-prompt lessons: {_lessons_line(summary)}",
        f"- {wall_line(summary)}",
        f"- rounds used per prompt: {_fmt(summary['rounds_used'])}",
        f"- success rate, {check['label']}: {_fmt(check['success_rate'])}",
        "",
        *(line for table in score_tables(summary) for line in _markdown_table(*table)),
        f"## Pass rate of the criteria per round, {check['label']}",
        "",
        "| round | " + " | ".join(str(i + 1) for i in range(len(rates))) + " |",
        "|---|" + "---|" * len(rates),
        "| pass rate | " + " | ".join(_fmt(v) for v in rates) + " |",
        "",
        *_markdown_table(*changes_table(check)),
        "## Cost",
        "",
        "| | total | per prompt |",
        "|---|---|---|",
    ]
    lines += [
        f"| {k} | {_fmt(v)} | {_fmt(summary['cost_per_prompt'].get(k))} |" for k, v in summary["cost_total"].items()
    ]
    lines.append(f"| wall_s | {_fmt(summary['wall_s'])} elapsed | {_fmt(summary['cost_per_prompt'].get('wall_s'))} |")
    if summary["errors"]:
        lines += ["", "## Failed prompts", ""] + [f"- {md_text(e)}" for e in summary["errors"]]
    return "\n".join(lines) + "\n"


# ---- gallery ----


def _record_score(record: dict[str, Any]) -> str:
    score = record.get("score") or {}
    if record.get("scorer") == "soft-tifa":
        return f"Soft-TIFA GM {100 * score['gm']:.2f} / AM {100 * score['am']:.2f}"
    if score.get("self_check") is not None:
        return f"self-check {100 * score['self_check']:.0f}%"
    return "not scored"


def report_html(summary: dict[str, Any], records: list[dict[str, Any]], out: Path) -> str:
    """A gallery: every prompt with every round's image, criteria ticks and experiences; images copied alongside."""
    check = summary["self_check"]
    intro = [
        headline(summary),
        *([f"judge: {summary['judge']}"] if summary.get("judge") else []),
        f"{summary['finished']}/{summary['prompts']} prompts, {_fmt(summary['rounds_used'])} rounds per prompt, "
        f"cross-prompt lessons {_lessons_line(summary)}. Criteria pass rate by round ({check['label']}): "
        + " → ".join(_fmt(v) for v in check["round_pass_rate"])
        + ".",
        f"per prompt (mean; a prompt's images together): {cost_line(summary['cost_per_prompt'])}",
        wall_line(summary),
    ]

    src_for = copied_beside(out)
    items = []
    for record in records:
        skill = f"skill {record['skill']}" if record.get("skill") else "no skill"
        line = f"{_record_score(record)} · {skill} · {cost_line(record.get('cost') or {})}"
        items.append(gallery_item(record, line, src_for))
    title = f"gems bench: {summary['method']} on {summary['dataset']}"
    return render_gallery(title, intro, items, [*score_tables(summary), changes_table(check)])


def write_reports(out: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report_markdown(summary), encoding="utf-8")
    (out / "report.html").write_text(report_html(summary, records, out), encoding="utf-8")
