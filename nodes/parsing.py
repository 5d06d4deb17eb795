"""Strict parsers for what the MLLM roles answer: verdicts, criteria lists, skill names and prompts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from gems.nodes.mllm import split_thinking

_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_WORD_RE = re.compile(r"[A-Za-z]+")


class CriteriaParseError(ValueError):
    """The decomposer's answer is not a JSON array of questions."""


def parse_verdict(answer: str) -> bool | None:
    """Read a yes/no verdict from its first word: True for yes, False for no, None when it is neither.

    "Yes, nothing is missing" is a yes; "not sure", "noted" and "yesterday" are not verdicts.
    """
    text, _ = split_thinking(answer)
    match = _WORD_RE.search(text)
    if match is None:
        return None
    word = match.group(0).lower()
    if word == "yes":
        return True
    if word == "no":
        return False
    return None


def _json_candidates(text: str) -> list[str]:
    candidates = [m.strip() for m in _FENCE_RE.findall(text)]
    start, end = text.find("["), text.rfind("]")
    if start != -1 and end > start:
        candidates.append(text[start : end + 1])
    candidates.append(text.strip())
    return candidates


def _json_values(text: str) -> Iterator[Any]:
    """Each candidate of `text` that reads as JSON, read, in order (fenced blocks, the outermost brackets, all)."""
    for candidate in _json_candidates(text):
        try:
            yield json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue


def parse_criteria(answer: str) -> list[str]:
    """Parse a JSON array of yes/no questions; strings or objects with a `question` field are accepted.

    Raises:
        CriteriaParseError: when no JSON array of questions can be read from the answer.
    """
    text, _ = split_thinking(answer)
    for data in _json_values(text):
        if isinstance(data, dict):
            data = data.get("criteria", data.get("questions"))
        if not isinstance(data, list):
            continue
        questions: list[str] = []
        for item in data:
            if isinstance(item, dict):
                item = item.get("question")
            if not isinstance(item, str):
                break
            questions.append(" ".join(item.split()))
        else:
            return dedupe([q for q in questions if q])
    snippet = " ".join(text.split())[:120]
    raise CriteriaParseError(f"expected a JSON array of yes/no questions, got: {snippet!r}")


def dedupe(items: list[str]) -> list[str]:
    """Drop repeated items (case- and space-insensitive), keeping the first occurrence's order."""
    seen: set[str] = set()
    out = []
    for item in items:
        key = " ".join(item.lower().split())
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def parse_skill_choice(answer: str, names: list[str]) -> str | None:
    """Return the skill named by a router reply, or None for NONE or anything that is not exactly one name."""
    text, _ = split_thinking(answer)
    cleaned = text.strip().strip("`*\"'.").strip()
    if cleaned in names:
        return cleaned
    return None


_PROMPT_LABEL_RE = re.compile(
    r"^\s*\**\s*(?:final\s+|new\s+|refined\s+|improved\s+|edit\s+)?(?:prompt|instruction)\s*\**\s*:\s*\**\s*", re.I
)


def clean_prompt(answer: str) -> str:
    """Strip wrappers models add around a prompt: thinking, code fences, a 'Prompt:' label, outer quotes."""
    text, _ = split_thinking(answer)
    fenced = _FENCE_RE.findall(text)
    if fenced:
        text = fenced[0]
    text = _PROMPT_LABEL_RE.sub("", text.strip())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return text.strip()


_CHOICE_RE = re.compile(r"^\s*(ACTION|REASON|TEXT)\s*:\s*", re.IGNORECASE | re.MULTILINE)


def parse_choice(answer: str) -> tuple[str | None, str | None, str]:
    """Read the `ACTION:` / `REASON:` / `TEXT:` answer of refine_mode auto.

    Returns:
        (`"edit"`, `"regenerate"` or None when no valid action was given, the reason or None, the text). Without a
        `TEXT:` field the whole answer (less the other fields) is the text.
    """
    text, _ = split_thinking(answer)
    fields: dict[str, str] = {}
    marks = list(_CHOICE_RE.finditer(text))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        fields.setdefault(mark.group(1).upper(), text[mark.end() : end].strip())
    # ACTION and REASON are one line each; lines after them are the text when no TEXT field came.
    heads = {k: v.split("\n", 1) for k, v in fields.items() if k != "TEXT"}
    words = _WORD_RE.findall(heads.get("ACTION", [""])[0].lower())
    action = words[0] if words and words[0] in ("edit", "regenerate") else None
    reason = " ".join(heads["REASON"][0].split())[:300] if heads.get("REASON", [""])[0].strip() else None
    body = fields.get("TEXT")
    if body is None:
        leftovers = [text[: marks[0].start()] if marks else text] + [h[1] for h in heads.values() if len(h) > 1]
        body = "\n".join(part.strip() for part in leftovers if part.strip())
    return action, reason, clean_prompt(body)


_NUMBERED_RE = re.compile(r"^\s*(?:Q|question\s*)?(\d+)\s*[.):\-]\s*(.+)$", re.I | re.M)


def parse_verdicts(answer: str, count: int) -> dict[int, tuple[bool, str]]:
    """The batched verifier's answers: question number (1-based) -> (passed, the few words why).

    Reads a JSON array of `{"n", "answer", "why"}` objects (or exactly `count` answers in question order), else
    numbered lines (`1. yes - ...`). Only answers that can be tied to their question are kept; the caller asks the
    rest one by one, never passes them silently:
    - a number outside 1..count (counting from 0, an extra question) means the numbering cannot be trusted: nothing
      is kept;
    - answers in order are read only when there are exactly `count` of them (a preamble would shift them);
    - a question answered twice, differently, is left out; an item with no usable number or answer is left out.
    """
    text, _ = split_thinking(answer)
    for data in _json_values(text):
        if isinstance(data, dict):
            data = data.get("answers") or data.get("results")
        if isinstance(data, list) and data:
            return _verdict_items(data, count)
    items = [(int(m.group(1)), m.group(2)) for m in _NUMBERED_RE.finditer(text)]
    return _tied(((number, parse_verdict(rest), rest) for number, rest in items), count)


def _verdict_items(data: list[Any], count: int) -> dict[int, tuple[bool, str]]:
    numbered = any(isinstance(item, dict) and ("n" in item or "index" in item) for item in data)
    if not numbered and len(data) != count:
        return {}  # in order, but not one answer per question: which is which is a guess
    rows: list[tuple[Any, bool | None, str]] = []
    for position, item in enumerate(data, 1):
        number: Any = position
        said: Any = item
        why = ""
        if isinstance(item, dict):
            number = item.get("n", item.get("index")) if numbered else position
            said = item.get("answer", item.get("verdict", ""))
            why = str(item.get("why", item.get("reason", "")) or "")
        verdict = said if isinstance(said, bool) else parse_verdict(said) if isinstance(said, str) else None
        rows.append((number, verdict, why))
    return _tied(rows, count)


def _tied(rows: Iterable[tuple[Any, bool | None, str]], count: int) -> dict[int, tuple[bool, str]]:
    found: dict[int, tuple[bool, str]] = {}
    contradicted: set[int] = set()
    for number, verdict, why in rows:
        if isinstance(number, bool) or not isinstance(number, int):
            continue  # no usable number: that item only
        if not 1 <= number <= count:
            return {}  # numbered from 0, or a question that was not asked: the numbering is off
        if verdict is None:
            continue
        if number in found and found[number][0] != verdict:
            contradicted.add(number)
        found.setdefault(number, (verdict, " ".join(why.split())[:200]))
    return {n: v for n, v in found.items() if n not in contradicted}


# "LESSON: x", "**Lesson:** x", "Lesson - x", "### Lesson" on a line of its own.
_LESSON_RE = re.compile(r"^[ \t]*(?:#+[ \t]*)?\**[ \t]*LESSON[ \t]*\**[ \t]*(?:[:\-–][ \t]*\**[ \t]*|$)", re.I | re.M)
_LABELS = "PROMPT|INSTRUCTION|ACTION|REASON|TEXT"
_LABEL_LINE_RE = re.compile(rf"^[ \t]*(?:#+[ \t]*)?\**[ \t]*(?:{_LABELS})[ \t]*\**[ \t]*:", re.I | re.M)
_LABEL_INLINE_RE = re.compile(rf"(?<!\w)(?:{_LABELS})[ \t]*\**[ \t]*:")  # mid-line only in capitals, as asked


def split_lesson(answer: str) -> tuple[str | None, str]:
    """A merged refiner's answer: (its lesson or None, the rest: the prompt or the mode's own answer).

    The lesson runs from its `LESSON:` marker to the next label (`PROMPT:`, `INSTRUCTION:`, `ACTION:`; on its own
    line or, in capitals, on the same line); with no label, to the first blank line, or the end of its line when
    there is none. Without a marker, text before the first label is dropped, so it never reaches the generator.
    """
    text, _ = split_thinking(answer)
    mark = _LESSON_RE.search(text)
    if mark is None:
        label = _LABEL_LINE_RE.search(text)
        return None, (text[label.start() :] if label else text).strip()
    after = text[mark.end() :]
    labels = [m for m in (_LABEL_LINE_RE.search(after), _LABEL_INLINE_RE.search(after)) if m is not None]
    if labels:
        cut = min(m.start() for m in labels)
        lesson, rest = after[:cut], after[cut:]
    else:
        body = after.lstrip(" \t").removeprefix("\n") if after.strip() else ""
        lesson, blank, remainder = body.partition("\n\n")
        if not blank:
            lesson, _, remainder = body.partition("\n")
        rest = remainder
        before = text[: mark.start()].strip()
        rest = f"{before}\n{rest}" if before else rest
    lesson = lesson.strip().strip("*").strip()
    return (" ".join(lesson.split()) or None), rest.strip()
