"""Bench reports: `summary.json`, `report.md` and a self-contained `report.html` gallery."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from statistics import mean
from typing import Any

COST_KEYS = ("mllm_calls", "input_tokens", "output_tokens", "image_parts", "generator_calls", "wall_s",
             "generator_busy_s")  # fmt: skip


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


def build_summary(
    records: list[dict[str, Any]],
    *,
    dataset: str,
    method: str,
    total: int,
    errors: list[str],
    wall_s: float,
    max_rounds: int,
) -> dict[str, Any]:
    scored = [r for r in records if isinstance(r.get("score"), dict)]
    by_category: dict[str, list[float]] = {}
    for record in scored:
        for category in record.get("categories") or ["all"]:
            by_category.setdefault(category, []).append(record["score"]["score"])
    checked = [r for r in records if r.get("criteria")]
    costs = {key: round(sum((r.get("cost") or {}).get(key, 0) or 0 for r in records), 4) for key in COST_KEYS}
    return {
        "dataset": dataset,
        "method": method,
        "prompts": total,
        "finished": len(records),
        "errors": errors,
        "scorer": scored[0].get("scorer") if scored else None,
        "score": round(mean(r["score"]["score"] for r in scored), 4) if scored else None,
        "score_am": round(mean(r["score"]["am"] for r in scored if "am" in r["score"]), 4)
        if any("am" in r["score"] for r in scored)
        else None,
        "by_category": {k: {"score": round(mean(v), 4), "n": len(v)} for k, v in sorted(by_category.items())},
        "success_rate": round(mean(1.0 if r.get("success") else 0.0 for r in checked), 4) if checked else None,
        "rounds_used": round(mean(len(r.get("rounds") or []) for r in records), 3) if records else None,
        "round_pass_rate": round_pass_rates(records, max_rounds),
        "cost_total": costs,
        "cost_per_prompt": {k: round(v / len(records), 4) for k, v in costs.items()} if records else {},
        "bench_wall_s": round(wall_s, 3),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def report_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# gems bench: {summary['method']} on {summary['dataset']}",
        "",
        f"- prompts: {summary['finished']}/{summary['prompts']} finished"
        + (f", {len(summary['errors'])} failed" if summary["errors"] else ""),
        f"- score ({summary['scorer'] or 'none'}): {_fmt(summary['score'])}"
        + (f" (atom mean {_fmt(summary['score_am'])})" if summary.get("score_am") is not None else ""),
        f"- success rate (all criteria passed): {_fmt(summary['success_rate'])}",
        f"- rounds used per prompt: {_fmt(summary['rounds_used'])}",
        "",
        "## Pass rate of the criteria per round",
        "",
        "| round | " + " | ".join(str(i + 1) for i in range(len(summary["round_pass_rate"]))) + " |",
        "|---|" + "---|" * len(summary["round_pass_rate"]),
        "| pass rate | " + " | ".join(_fmt(v) for v in summary["round_pass_rate"]) + " |",
        "",
    ]
    if summary["by_category"]:
        lines += ["## Score per category", "", "| category | score | prompts |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(v['score'])} | {v['n']} |" for k, v in summary["by_category"].items()]
        lines.append("")
    lines += ["## Cost", "", "| | total | per prompt |", "|---|---|---|"]
    lines += [
        f"| {k} | {_fmt(v)} | {_fmt(summary['cost_per_prompt'].get(k))} |" for k, v in summary["cost_total"].items()
    ]
    if summary["errors"]:
        lines += ["", "## Failed prompts", ""] + [f"- {e}" for e in summary["errors"]]
    return "\n".join(lines) + "\n"


CSS = """body{font:14px system-ui,sans-serif;margin:2em;background:#fafafa;color:#222}
.item{background:#fff;border:1px solid #ddd;border-radius:8px;margin:1.5em 0;padding:1em}
.rounds{display:flex;gap:1em;overflow-x:auto}.round{min-width:220px;max-width:260px}
.round img{width:100%;border-radius:4px;border:3px solid #ccc}.round.final img{border-color:#2a7}
.ok{color:#2a7}.no{color:#c33}.small{font-size:12px;color:#555}ul{padding-left:1.1em;margin:.3em 0}"""


def _cost_line(cost: dict[str, Any]) -> str:
    def n(key: str) -> str:  # counts: whole for one prompt, one decimal for an average
        value = cost.get(key, 0) or 0
        return str(int(value)) if float(value).is_integer() else f"{value:.1f}"

    return (
        f"{n('mllm_calls')} MLLM calls ({n('input_tokens')} in / {n('output_tokens')} out tokens, "
        f"{n('image_parts')} images sent) · {n('generator_calls')} generations "
        f"({cost.get('generator_busy_s', 0):.2f}s busy) · {cost.get('wall_s', 0):.2f}s wall"
    )


def report_html(summary: dict[str, Any], records: list[dict[str, Any]], out: Path) -> str:
    """A gallery: every prompt with every round's image, criteria ticks and experiences; images copied alongside."""
    images = out / "images"
    images.mkdir(exist_ok=True)
    esc = html.escape
    title = f"gems bench: {esc(summary['method'])} on {esc(summary['dataset'])}"
    parts = [
        f"<!doctype html><meta charset=utf-8><title>{title}</title><style>{CSS}</style><h1>{title}</h1>",
        f"<p>score {esc(_fmt(summary['score']))} ({esc(str(summary['scorer']))}), success rate "
        f"{esc(_fmt(summary['success_rate']))}, {summary['finished']}/{summary['prompts']} prompts, "
        f"{esc(_fmt(summary['rounds_used']))} rounds per prompt. Criteria pass rate by round: "
        + " → ".join(esc(_fmt(v)) for v in summary["round_pass_rate"])
        + f".</p><p class=small>per prompt: {esc(_cost_line(summary['cost_per_prompt']))}</p>",
    ]
    for record in records:
        final_round = (record.get("final") or {}).get("round")
        score = (record.get("score") or {}).get("score")
        parts.append(f"<div class=item><h3>{esc(record['id'])}: {esc(record['prompt'])}</h3>")
        skill = f"skill {record['skill']}" if record.get("skill") else "no skill"
        parts.append(
            f"<p class=small>score {esc(_fmt(score))} · {esc(skill)} · {esc(_cost_line(record.get('cost') or {}))}</p>"
            "<div class=rounds>"
        )
        for r in record.get("rounds") or []:
            image = r.get("image") or {}
            name = f"{image.get('sha256', 'missing')}.png"
            if image.get("path") and Path(image["path"]).exists() and not (images / name).exists():
                shutil.copyfile(image["path"], images / name)
            ticks = "".join(f"<li class=ok>✓ {esc(q)}</li>" for q in r.get("passed") or [])
            ticks += "".join(f"<li class=no>✗ {esc(q)}</li>" for q in r.get("failed") or [])
            cls = "round final" if r.get("round") == final_round else "round"
            parts.append(
                f"<div class='{cls}'><b>round {r.get('round')}</b><img src='images/{esc(name)}' loading=lazy>"
                f"<p class=small>{esc(r.get('prompt') or '')}</p><ul>{ticks}</ul>"
                + (f"<p class=small><i>{esc(r['experience'])}</i></p>" if r.get("experience") else "")
                + "</div>"
            )
        parts.append("</div></div>")
    return "\n".join(parts) + "\n"


def write_reports(out: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report_markdown(summary), encoding="utf-8")
    (out / "report.html").write_text(report_html(summary, records, out), encoding="utf-8")
