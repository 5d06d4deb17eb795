"""What a person reads in `messages`: the request, one message per round, the final answer; and the request itself.

Messages are Markdown (chat UIs and LangGraph Studio render it): images as `![...](url)` with signed, expiring URLs
(`gems.memory.links`) the serving process answers, criteria as ticks, the round's lesson and next prompt in a line
each. A round's message is written when its verdicts are in and completed (same id) when the next prompt is; the
final message names the chosen image, what passed, seed, model and the run's page. State keeps references only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.config import get_config

from gems.configs import GemsSettings, UsageError
from gems.memory.artifacts import ArtifactStore
from gems.memory.links import artifact_url, run_url, url_secret
from gems.nodes.runtime import lesson_settings

EMPTY_REQUEST = (
    'the request is empty: send {"messages": [{"role": "user", "content": "a red cube on a table"}]} '
    'or {"prompt": "a red cube on a table"}'
)
MAX_REFERENCES = 4  # attached images a request may bring
_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,(.*)", re.DOTALL)


@dataclass(frozen=True)
class Links:
    """Signed links for one run: images and the run's page, for the caller's tenant."""

    secret: bytes
    tenant: str
    thread_id: str | None

    def image(self, ref: Mapping[str, Any]) -> str:
        return artifact_url(self.secret, str(ref.get("sha256")), self.tenant)

    def page(self) -> str | None:
        return run_url(self.secret, self.thread_id, self.tenant) if self.thread_id else None


async def run_links(settings: GemsSettings) -> Links:
    """The links of the run in progress (its thread and tenant); the signing key is read off the event loop."""
    try:
        thread = (get_config().get("configurable") or {}).get("thread_id")
    except RuntimeError:  # outside a graph run
        thread = None
    tenant = lesson_settings(settings).memory.tenant or ""
    secret = await asyncio.to_thread(url_secret, settings.data_dir)
    return Links(secret, tenant, str(thread) if thread else None)


def message_id(turn: int, what: str) -> str:
    """Stable ids, so a round's message is completed in place rather than added twice."""
    return f"gems-{turn}-{what}"


def _ticks(verdicts: Sequence[Mapping[str, Any]], criteria: Sequence[str], passed: Sequence[str]) -> list[str]:
    answered = {v.get("criterion"): v for v in verdicts}
    lines = []
    for q in criteria:
        # Plain marks: they render in every font (emoji do not, in a headless or minimal browser).
        if q in passed:
            lines.append(f"- ✓ {_inline(q)}")
        elif (answered.get(q) or {}).get("error") and not (answered.get(q) or {}).get("answer"):
            lines.append(f"- ✗ {_inline(q)} (not checked: the verifier call failed)")
        else:
            lines.append(f"- ✗ {_inline(q)}")
    return lines


def _inline(text: Any, limit: int = 600) -> str:
    """One line of Markdown-safe text: no line breaks, no raw HTML, at most `limit` characters."""
    flat = " ".join(str(text or "").split()).replace("<", "&lt;")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def round_message(
    turn: int, record: Mapping[str, Any], criteria: Sequence[str], links: Links, next_step: str | None = None
) -> AIMessage:
    """The message of one round: its image(s), each criterion ticked, and once known the lesson and next step."""
    n = record["round"]
    passed = list(record.get("passed") or [])
    head = f"**Round {n}**: {len(passed)} of {len(criteria)} criteria passed"
    if record.get("mode") == "edit":
        head += f" (an edit of round {record.get('base_round')}'s image)" if record.get("base_round") else " (an edit)"
    if record.get("kept") is not None and record.get("base_round"):
        head += f"; {len(record.get('fixed') or [])} fixed, {len(record.get('broken') or [])} broken"
    lines = [head, ""]
    candidates = record.get("candidates") or [record.get("image") or {}]
    chosen = (record.get("image") or {}).get("sha256")
    for i, ref in enumerate(candidates):
        label = f"Round {n}" if len(candidates) == 1 else f"Round {n}, image {i + 1}"
        if len(candidates) > 1 and ref.get("sha256") == chosen:
            label += " (kept)"
        if ref.get("sha256"):
            lines.append(f"![{label}]({links.image(ref)})")
    lines += ["", *_ticks(record.get("verdicts") or [], criteria, passed)]
    if record.get("experience"):
        lines += ["", f"*Lesson:* {_inline(record['experience'])}"]
    if next_step:
        lines += ["", next_step]
    return AIMessage(content="\n".join(lines), id=message_id(turn, f"round-{n}"), name="gems")


def next_step_line(action: Mapping[str, Any], text: str) -> str:
    if action.get("mode") == "edit":
        return f"*Next:* edit round {action.get('base_round')}'s image: {_inline(text)}"
    return f"*Next prompt:* {_inline(text)}"


def final_message(turn: int, state: Mapping[str, Any], final: Mapping[str, Any], links: Links) -> AIMessage:
    """The answer: the chosen image, what it passed, seed, model and size, and the run's page."""
    criteria = list(state.get("criteria") or [])
    image = final.get("image") or {}
    rounds = state.get("rounds") or []
    record: Mapping[str, Any] = next((r for r in rounds if r.get("round") == final.get("round")), {})
    if not criteria:
        head = "**Here is your image** (no criteria could be drawn from the request, so it was not checked)."
    elif not record.get("failed"):
        head = f"**Done**: all {len(criteria)} criteria passed in round {final.get('round')}."
    else:
        head = (
            f"**Best attempt**: round {final.get('round')} passed {final.get('passed')} of {final.get('total')} "
            f"criteria after {len(rounds)} rounds."
        )
    lines = [head, ""]
    if image.get("sha256"):
        lines += [f"![Final image]({links.image(image)})", ""]
    lines += _ticks(record.get("verdicts") or [], criteria, record.get("passed") or [])
    facts = [f"seed {image['seed']}" if image.get("seed") is not None else "seed not reported"]
    if image.get("model"):
        facts.append(_inline(image["model"], 120))
    if image.get("steps"):
        facts.append(f"{image['steps']} steps")
    if image.get("width"):
        facts.append(f"{image['width']}×{image.get('height')}")
    page = links.page()
    if page:
        facts.append(f"[the whole run]({page})")
    lines += ["", " · ".join(facts)]
    return AIMessage(content="\n".join(lines), id=message_id(turn, "final"), name="gems")


# ---- the request -------------------------------------------------------------------------------------------------


def request_parts(message: HumanMessage) -> tuple[str, list[bytes]]:
    """The text of a human message and the bytes of the images it attaches (data URLs or base64 blocks)."""
    content = message.content
    if isinstance(content, str):
        return content.strip(), []
    texts, images = [], []
    for block in content:
        if isinstance(block, str):
            texts.append(block)
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind in ("image_url", "image"):
            data = _image_bytes(block)
            if data is not None:
                images.append(data)
    return "\n".join(t.strip() for t in texts if t.strip()), images


def _image_bytes(block: Mapping[str, Any]) -> bytes | None:
    """An attached image's bytes: OpenAI `image_url` with a data URL, or LangChain's base64 image blocks."""
    url = block.get("image_url")
    url = url.get("url") if isinstance(url, Mapping) else (url or block.get("url"))
    raw = None
    if isinstance(url, str) and (match := _DATA_URL.fullmatch(url)):
        raw = match.group(1)
    elif block.get("base64") or block.get("data"):
        raw = block.get("base64") or block.get("data")
    if not isinstance(raw, str):
        return None  # a remote URL: gems does not fetch what a request points at
    try:
        return base64.b64decode(raw, validate=False)
    except (binascii.Error, ValueError):
        raise UsageError("an attached image is not valid base64") from None


def stored_request(
    message: HumanMessage, text: str, images: list[bytes], store: ArtifactStore, links: Links
) -> tuple[HumanMessage, list[dict[str, Any]]]:
    """The request as state keeps it: attached images stored as files and shown by signed URL, never as base64."""
    if len(images) > MAX_REFERENCES:
        raise UsageError(f"a request may attach at most {MAX_REFERENCES} images, not {len(images)}")
    refs = [store.put_bytes(data, origin="an attached image") for data in images]
    if not refs:
        return message, []
    content: list[str | dict[Any, Any]] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "image_url", "image_url": {"url": links.image(ref)}} for ref in refs]
    return HumanMessage(content=content, id=message.id), refs
