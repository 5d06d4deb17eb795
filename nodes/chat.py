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
from urllib.parse import parse_qsl

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.config import get_config

from gems.configs import GemsSettings, UsageError
from gems.memory.artifacts import ArtifactStore
from gems.memory.links import artifact_url, check, run_url, tenant_of, url_secret

EMPTY_REQUEST = (
    'the request is empty: send {"messages": [{"role": "user", "content": "a red cube on a table"}]} '
    'or {"prompt": "a red cube on a table"}'
)
MAX_REFERENCES = 4  # attached images a request may bring
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(.*)", re.DOTALL | re.IGNORECASE)
_ARTIFACT_LINK = re.compile(r"/artifacts/([0-9a-f]{64})\.png\?(.*)$")


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

    def own_image(self, url: str) -> str | None:
        """The sha256 of an image link this server signed for this tenant (a previous answer's, an attachment's);
        None for any other link."""
        match = _ARTIFACT_LINK.search(url)
        if match is None:
            return None
        params = dict(parse_qsl(match.group(2)))
        return match.group(1) if check(self.secret, "artifact", match.group(1), params) == self.tenant else None


def _caller() -> str | None:
    """The Agent Server's authenticated caller of this run, if any."""
    try:
        return (get_config().get("configurable") or {}).get("langgraph_auth_user_id")
    except RuntimeError:
        return None


async def run_links(settings: GemsSettings) -> Links:
    """The links of the run in progress (its thread and tenant); the signing key is read off the event loop."""
    try:
        thread = (get_config().get("configurable") or {}).get("thread_id")
    except RuntimeError:  # outside a graph run
        thread = None
    tenant = settings.memory.tenant or tenant_of(_caller())
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


def request_parts(message: HumanMessage) -> tuple[str, list[dict[str, Any]]]:
    """The text of a human message and its attachment blocks (everything but text)."""
    content = message.content
    if isinstance(content, str):
        return content.strip(), []
    texts, blocks = [], []
    for block in content:
        if isinstance(block, str):
            texts.append(block)
        elif block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        else:
            blocks.append(block)
    return "\n".join(t.strip() for t in texts if t.strip()), blocks


def inline_image(block: Mapping[str, Any]) -> bytes | None:
    """The bytes of an image sent inline, in any shape clients use: OpenAI `image_url`/`input_image` with a data URL,
    LangChain's `image` blocks (`base64` or `data`, with `mime_type`/`mimeType`), Anthropic's `source` blocks.
    None for a block that is no inline image (a link, say).

    Raises:
        UsageError: inline data that is not an image (a file, a PDF) or is not valid base64; one line.
    """
    url = block.get("image_url")
    url = url.get("url") if isinstance(url, Mapping) else (url or block.get("url"))
    given = block.get("source")
    source: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    raw = block.get("base64") or block.get("data") or source.get("data")
    kind = str(block.get("mime_type") or block.get("mimeType") or source.get("media_type") or "")
    if isinstance(url, str) and url[:5].lower() == "data:":
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise UsageError("only images can be attached (a data: URL of another type was sent)")
        raw, kind = match.group(2), match.group(1)
    if raw is None:
        return None
    if block.get("type") not in ("image", "image_url", "input_image") or (kind and not kind.startswith("image/")):
        raise UsageError(f"only images can be attached, not {kind or block.get('type') or 'this block'}")
    try:
        return base64.b64decode(str(raw), validate=False)
    except (binascii.Error, ValueError):
        raise UsageError("an attached image is not valid base64") from None


def linked_attachments(content: Any, store: ArtifactStore, links: Links) -> Any:
    """A message's content with every inline image stored as a file and replaced by its signed link.

    The Agent Server does this to a run's input before the run starts, so no checkpoint ever holds base64.
    """
    if not isinstance(content, list):
        return content
    out, count = [], 0
    for block in content:
        data = inline_image(block) if isinstance(block, Mapping) else None
        if data is None:
            out.append(block)
            continue
        count += 1
        if count > MAX_REFERENCES:
            raise UsageError(f"a request may attach at most {MAX_REFERENCES} images")
        ref = store.put_bytes(data, origin="an attached image")
        out.append({"type": "image_url", "image_url": {"url": links.image(ref)}})
    return out


def stored_request(
    message: HumanMessage, blocks: list[dict[str, Any]], store: ArtifactStore, links: Links
) -> tuple[HumanMessage, list[dict[str, Any]]]:
    """The request's attachments as references: inline images stored (the message then shows their links instead),
    links this server signed for this tenant taken as they are; links elsewhere are not fetched."""
    refs: list[dict[str, Any]] = []
    for block in blocks:
        data = inline_image(block)
        if data is not None:
            refs.append(store.put_bytes(data, origin="an attached image"))
            continue
        url = block.get("image_url")
        url = url.get("url") if isinstance(url, Mapping) else (url or block.get("url"))
        sha = links.own_image(url) if isinstance(url, str) else None
        if sha is not None:
            refs.append(store.ref_for(sha))
    if len(refs) > MAX_REFERENCES:
        raise UsageError(f"a request may attach at most {MAX_REFERENCES} images, not {len(refs)}")
    if not any(inline_image(b) is not None for b in blocks):
        return message, refs
    content: Any = linked_attachments(message.content, store, links)
    return HumanMessage(content=content, id=message.id), refs
