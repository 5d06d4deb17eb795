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


def caption(image: dict[str, Any]) -> str:
    """What made an image: seed, model, steps and size, in one line."""
    parts = [f"seed {image['seed']}" if image.get("seed") is not None else "seed not reported"]
    if image.get("model"):
        parts.append(str(image["model"]))
    if image.get("steps"):
        parts.append(f"{image['steps']} steps")
    if image.get("width"):
        parts.append(f"{image['width']}×{image.get('height')}")
    return " · ".join(parts)


def gallery_item(record: dict[str, Any], line: str, src_for: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """One run as the template draws it: every round's images (each candidate, the kept one marked) with what made
    them, prompt, ticks and experience; the returned round marked."""
    final_round = (record.get("final") or {}).get("round")
    rounds = []
    for r in record.get("rounds") or []:
        kept = (r.get("image") or {}).get("sha256")
        images = [
            {"src": src_for(image), "chosen": image.get("sha256") == kept, "caption": caption(image)}
            for image in (r.get("candidates") or [r.get("image") or {}])
        ]
        rounds.append({**r, "images": images, "final": r.get("round") == final_round})
    heading = f"{record['id']}: {record['prompt']}" if record.get("id") else record.get("prompt", "")
    return {"heading": heading, "line": line, "rounds": rounds}


def render_template(name: str, **context: Any) -> str:
    """Render one of the package's HTML templates (autoescaped)."""
    return _templates.get_template(name).render(**context)


def render_gallery(
    title: str, intro: list[str], items: list[dict[str, Any]], tables: list[Table] | None = None, refresh: int = 0
) -> str:
    """A gallery page; `refresh` (seconds) makes the browser reload it, for a run still going."""
    return _templates.get_template("gallery.html.j2").render(
        title=title, intro=intro, tables=tables or [], items=items, refresh=refresh
    )


def run_page(result: dict[str, Any], src_for: Callable[[dict[str, Any]], str]) -> str:
    """The page of one run (`run_result`'s shape): request, skill, criteria, every round, the chosen image, cost."""
    final = result.get("final") or {}
    criteria = result.get("criteria") or []
    running = not final
    if running:
        done = len(result.get("rounds") or [])
        outcome = f"running, round {done + 1}" if done else "running: planning the first round"
        outcome += " (this page refreshes itself)"
    elif not criteria:
        outcome = "no criteria to check: one image from the request as written"
    else:
        verdict = "all criteria passed" if result.get("success") else "best so far (not every criterion passed)"
        if final.get("accepted"):
            verdict = "accepted by the reviewer"
        outcome = f"{verdict}: round {final.get('round')} chosen, {final.get('passed')}/{final.get('total')} passed"
    counts, usage, timings = result.get("counts") or {}, result.get("usage") or {}, result.get("timings") or {}
    cost = {
        "mllm_calls": counts.get("mllm_calls", 0),
        "input_tokens": int(usage.get("input_tokens", 0)),
        "output_tokens": int(usage.get("output_tokens", 0)),
        "image_parts": int(usage.get("image_parts", 0)),
        "generator_calls": counts.get("generator_calls", 0),
        "generator_busy_s": timings.get("generator_busy", 0.0),
        # The process's wall time when it was measured; else the nodes' own time (they overlap: an estimate).
        "wall_s": timings.get("wall_s") or sum(v for k, v in timings.items() if k != "generator_busy"),
    }
    intro = [
        f"request: {result.get('prompt', '')}",
        f"skill: {result.get('skill') or 'none'}",
        "criteria: " + ("; ".join(criteria) if criteria else "none"),
        outcome,
        f"cost: {cost_line(cost)}",
    ]
    item = gallery_item(result, "the green frame marks the image returned", src_for)
    return render_gallery(f"gems run: {result.get('prompt', '')}", intro, [item], refresh=3 if running else 0)
