"""HTML pages of runs: the bench gallery and the page of one run share `templates/gallery.html.j2`.

A page is self-contained (inline CSS, no scripts, no network); where its images live is the caller's choice
(`src_for`): a relative `images/<sha256>.png` beside the page, or the server's `/artifacts/<sha256>.png`.
"""

from __future__ import annotations

import ast
import contextlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2

from gems.configs.errors import one_line

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


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands, as its page and the runs list say it; only a running run's page refreshes itself.

    `kind`: running, review (paused for a person), error, cancelled, stopped (not finished, nothing known of why)
    or finished. `line`: the page's sentence; `label`: the runs list's cell.
    """

    kind: Literal["running", "review", "error", "cancelled", "stopped", "finished"]
    line: str
    label: str

    @property
    def refresh(self) -> int:
        return 3 if self.kind == "running" else 0


ONE_LINE_CHARS = 300
_URL = re.compile(r"\b[a-z][a-z0-9+.-]+:/{1,2}[^\s'\"),]*", re.I)  # http://…, file:/…, path:/…
_HOST = re.compile(  # an address without a scheme, and any path after it
    r"(?:\[[0-9a-f:.]+\](?::\d+)?"  # [fd00::5]:8000
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?"  # 10.1.2.3, 10.1.2.3:8000
    r"|\b[a-z][a-z0-9-]*(?:\.[a-z0-9-]+)*:\d{2,5}\b"  # localhost:8000, gpubox:8000, api.internal.corp:8000
    r"|\b[a-z][a-z0-9-]*(?:\.[a-z0-9-]+)+(?=/))"  # gpu01.internal.corp/v1 (a dot before the first slash)
    r"(?:/[^\s'\"),]*)?",
    re.I,
)
_USERINFO = re.compile(r"(?<![\w/])[^\s/@:'\"]+:[^\s@'\"]*@[^\s'\"),]+")  # bob:hunter2@gpubox/gen, no scheme
_HOST_ARG = re.compile(r"\b(host|hostname|server)=(['\"]?)[^'\",\s)]+\2")  # host='gpubox', as urllib3 writes it
# A quoted path (spaces and all), then unquoted ones: absolute with two or more parts (/srv/x, not /v1), home or
# dot relative, Windows and UNC. Relative names with a slash (Qwen/Qwen3-VL-8B, 3/5, HTTP/1.1) are not paths here.
_QUOTED = re.compile(r"(['\"])(?:~|/|\.\.?/|[a-z]:[\\/]|\\\\)[^'\"]*\1", re.I)
_PATH = re.compile(
    r"(?:(?<![\w.:/<-])/[^\s/'\",;)]+/|(?<![\w.:/-])(?:~[\w.-]*|\.\.?)/|\b[a-z]:[\\/]|\\\\)[^\s'\",;)]*(?<!:)",
    re.I,
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")
_REPR = re.compile(r"^(\w+(?:\.\w+)*)\((['\"])(.*)\2,?\)$", re.S)


def _masked(text: str) -> str:
    """Addresses and paths in `text` replaced by <endpoint> and <path>."""
    text = _URL.sub("<endpoint>", _HOST.sub("<endpoint>", _USERINFO.sub("<endpoint>", text)))
    text = _HOST_ARG.sub(lambda m: f"{m.group(1)}=<endpoint>", text)
    text = _QUOTED.sub(lambda m: f"{m.group(1)}<path>{m.group(1)}", text)
    return _PATH.sub("<path>", text)


def error_line(error: Any) -> str:
    """An error as one line a page may show: `Type: message`, first line only, endpoints and paths left out (the
    page may be opened by anyone with its link; nothing served names where the server's parts live)."""
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    elif isinstance(error, dict):  # the Agent Server's serialised exception
        kind, message = error.get("error") or error.get("type"), error.get("message") or error.get("detail")
        text = f"{kind}: {message}" if kind and message else str(message or kind or error)
    else:
        text = str(error or "").strip()
        match = _REPR.match(text)  # a checkpoint keeps a failed task's error as its repr: GeneratorError('...')
        if match:
            quoted = match.group(2) + match.group(3) + match.group(2)
            with contextlib.suppress(ValueError, SyntaxError):
                quoted = ast.literal_eval(quoted)  # undo the repr's escapes (C:\\x reads C:\x)
            text = f"{match.group(1)}: {quoted}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    text = _masked(one_line(_ANSI.sub("", first)))
    return text if len(text) <= ONE_LINE_CHARS else text[: ONE_LINE_CHARS - 1] + "…"


def _attr(snapshot: Any, name: str) -> Any:
    return snapshot.get(name) if isinstance(snapshot, dict) else getattr(snapshot, name, None)


def _round_in_progress(values: dict[str, Any], pending: list[str]) -> str:
    """The line "running, round k" (k: the round in progress), "running: planning the first round" or "running:
    finishing", from the latest checkpoint: a round is done once its criteria are ticked (`rounds`), in progress
    from its generation (`round`) until then, and the next one is in progress while its prompt is written."""
    if {"finalize", "learn"} & set(pending):
        return "running: finishing"
    if "generate" in pending:  # a round's image is being made (`round` counts the rounds generated before it)
        return f"running, round {(values.get('round') or 0) + 1}"
    records = [r.get("round") or 0 for r in values.get("rounds") or [] if isinstance(r, dict)]
    fresh = {"__start__", "intake"} & set(pending) or (values.get("final") and not pending)  # a new turn starting
    generated = values.get("round") or 0
    if fresh or not (records or generated):
        return "running: planning the first round"
    return f"running, round {max(generated, max(records, default=0) + 1)}"


def _waiting_for(value: Any, takes_answers: bool) -> str:
    value = value if isinstance(value, dict) else {}
    action = (value.get("action_request") or {}).get("action")
    if action == "review_round":
        passed, failed = len(value.get("passed") or []), len(value.get("failed") or [])
        what = f"round {value.get('round')}'s image ({passed} of {passed + failed} criteria passed)"
    elif action == "review_plan":
        what = f"the plan: the criteria and the first prompt \u201c{value.get('first_prompt') or ''}\u201d"
    else:
        what = "a person's answer"
    help_text = f" {value['help']}" if takes_answers and isinstance(value.get("help"), str) else ""
    return f"waiting for review of {what}.{help_text}"


def _tasks(snapshot: Any) -> list[dict[str, Any]]:
    return [t if isinstance(t, dict) else t._asdict() for t in _attr(snapshot, "tasks") or []]


def task_errors(snapshot: Any) -> tuple[list[Any], bool]:
    """The errors the latest checkpoint keeps for its pending tasks: the failures (a task that raised), and whether
    a task was cancelled (LangGraph records that as a `CancelledError`: a cancelled run, a client gone, a server
    stopping; parallel tasks are cancelled when one fails too, so failures come first)."""
    errors = [t.get("error") for t in _tasks(snapshot) if t.get("error")]
    failed = [e for e in errors if "CancelledError" not in repr(e)]
    return failed, len(failed) < len(errors)


def run_status(
    snapshot: Any,
    *,
    running: bool | None,
    how_to_resume: str,
    how_to_answer: str,
    error: Any = None,
    cancelled: bool = False,
    takes_answers: bool = True,
) -> RunStatus:
    """A run's status from its latest checkpoint (`values`, `next`, `tasks`: a `StateSnapshot` or the API's thread
    state) and what the server knows besides: whether a run is executing on the thread now (`running`; None when
    the server cannot say), an error it recorded, whether its last run was cancelled, whether it can take a review's
    answer (else a paused run's page leaves out the review's own help on answering).

    The checkpoint keeps a paused run's interrupts and a failed task's error, so both survive a restart.
    """
    values = dict(_attr(snapshot, "values") or {})
    pending = list(_attr(snapshot, "next") or [])
    tasks = _tasks(snapshot)
    if running:
        line = _round_in_progress(values, pending)
        return RunStatus("running", f"{line} (this page refreshes itself)", line)
    asked = [i for t in tasks for i in t.get("interrupts") or []]
    if asked and pending:
        first = asked[0]
        value = first.get("value") if isinstance(first, dict) else getattr(first, "value", None)
        return RunStatus("review", f"{_waiting_for(value, takes_answers)} {how_to_answer}", "waiting for review")
    failed, stopped = task_errors(snapshot)
    if failed or error:
        said = error_line(failed[0] if failed else error)
        line = f"stopped with an error: {said}" if said else "stopped with an error"
        return RunStatus("error", f"{line}. {how_to_resume}", line)
    final = values.get("final") or {}
    if final and not pending:
        criteria = values.get("criteria") or []
        if not criteria:
            line = "no criteria to check: one image from the request as written"
            return RunStatus("finished", line, "finished: nothing to check")
        verdict = "all criteria passed" if values.get("success") else "best so far (not every criterion passed)"
        if final.get("accepted"):
            verdict = "accepted by the reviewer"
        line = f"{verdict}: round {final.get('round')} chosen, {final.get('passed')}/{final.get('total')} passed"
        label = "all criteria passed" if values.get("success") else "best attempt"
        return RunStatus("finished", line, "accepted by the reviewer" if final.get("accepted") else label)
    if cancelled or stopped:
        return RunStatus("cancelled", f"cancelled before finishing. {how_to_resume}", "cancelled")
    if running is None:
        line = "not finished (whether it is still running is unknown here)"
        return RunStatus("stopped", f"{line}. {how_to_resume}", "not finished")
    line = "stopped before finishing"
    return RunStatus("stopped", f"{line} (nothing recorded says why). {how_to_resume}", line)


def run_page(result: dict[str, Any], src_for: Callable[[dict[str, Any]], str], status: RunStatus | None = None) -> str:
    """The page of one run (`run_result`'s shape): request, skill, criteria, where the run stands, every round, the
    chosen image, cost. Without `status` (a page written once, not served) the result alone says it: finished, or
    not finished; such a page never refreshes itself."""
    criteria = result.get("criteria") or []
    if status is None:
        snapshot = {"values": result, "next": [] if result.get("final") else ["?"], "tasks": []}
        status = run_status(snapshot, running=None, how_to_resume="", how_to_answer="")
        if status.kind != "finished":
            status = RunStatus("stopped", "not finished when this page was written", "not finished")
    outcome = status.line
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
    return render_gallery(f"gems run: {result.get('prompt', '')}", intro, [item], refresh=status.refresh)
