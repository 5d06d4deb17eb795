"""HTML pages of runs: the bench gallery and the page of one run share `templates/gallery.html.j2`.

A page is self-contained (inline CSS, no scripts, no network); where its images live is the caller's choice
(`src_for`): a relative `images/<sha256>.png` beside the page, or the server's `/artifacts/<sha256>.png`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("gems.interfaces", "templates"), autoescape=True, keep_trailing_newline=True
)
Table = tuple[str, list[str], list[list[str]]]


def cost_line(cost: dict[str, Any]) -> str:
    """MLLM calls and tokens, images sent, generations and busy time, judge calls, wall time: one line."""

    def n(key: str) -> str:  # counts: whole for one prompt, one decimal for an average
        value = cost.get(key, 0) or 0
        return str(int(value)) if float(value).is_integer() else f"{value:.1f}"

    judge = f" · {n('judge_calls')} judge calls" if cost.get("judge_calls") else ""
    return (
        f"{n('mllm_calls')} MLLM calls ({n('input_tokens')} in / {n('output_tokens')} out tokens, "
        f"{n('image_parts')} images sent) · {n('generator_calls')} generations "
        f"({cost.get('generator_busy_s', 0):.2f}s busy){judge} · {cost.get('wall_s', 0):.2f}s wall"
    )


def copied_beside(folder: Path) -> Callable[[dict[str, Any]], str]:
    """`src_for` for a page in `folder`: each image is copied once into `folder/images/<sha256>.png`, linked relatively,
    so the folder opens anywhere, offline."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)

    def src_for(image: dict[str, Any]) -> str:
        name = f"{image.get('sha256', 'missing')}.png"
        if image.get("path") and Path(image["path"]).is_file() and not (images / name).exists():
            shutil.copyfile(image["path"], images / name)
        return f"images/{name}"

    return src_for


def gallery_item(record: dict[str, Any], line: str, src_for: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """One run as the template draws it: every round's image, prompt, ticks and experience; the chosen one marked."""
    final_round = (record.get("final") or {}).get("round")
    rounds = [
        {**r, "src": src_for(r.get("image") or {}), "final": r.get("round") == final_round}
        for r in record.get("rounds") or []
    ]
    heading = f"{record['id']}: {record['prompt']}" if record.get("id") else record.get("prompt", "")
    return {"heading": heading, "line": line, "rounds": rounds}


def render_template(name: str, **context: Any) -> str:
    """Render one of the package's HTML templates (autoescaped)."""
    return _templates.get_template(name).render(**context)


def render_gallery(title: str, intro: list[str], items: list[dict[str, Any]], tables: list[Table] | None = None) -> str:
    return _templates.get_template("gallery.html.j2").render(title=title, intro=intro, tables=tables or [], items=items)


def run_page(result: dict[str, Any], src_for: Callable[[dict[str, Any]], str]) -> str:
    """The page of one run (`run_result`'s shape): request, skill, criteria, every round, the chosen image, cost."""
    final = result.get("final") or {}
    criteria = result.get("criteria") or []
    if not criteria:
        outcome = "no criteria to check: one image from the request as written"
    else:
        verdict = "all criteria passed" if result.get("success") else "best so far (not every criterion passed)"
        outcome = f"{verdict}: round {final.get('round')} chosen, {final.get('passed')}/{final.get('total')} passed"
    counts, usage, timings = result.get("counts") or {}, result.get("usage") or {}, result.get("timings") or {}
    cost = {
        "mllm_calls": counts.get("mllm_calls", 0),
        "input_tokens": int(usage.get("input_tokens", 0)),
        "output_tokens": int(usage.get("output_tokens", 0)),
        "image_parts": int(usage.get("image_parts", 0)),
        "generator_calls": counts.get("generator_calls", 0),
        "generator_busy_s": timings.get("generator_busy", 0.0),
        "wall_s": sum(v for k, v in timings.items() if k != "generator_busy"),
    }
    intro = [
        f"request: {result.get('prompt', '')}",
        f"skill: {result.get('skill') or 'none'}",
        "criteria: " + ("; ".join(criteria) if criteria else "none"),
        outcome,
        f"cost: {cost_line(cost)}",
    ]
    item = gallery_item(result, "the green frame marks the image returned", src_for)
    return render_gallery(f"gems run: {result.get('prompt', '')}", intro, [item])
