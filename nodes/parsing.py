"""Strict parsers for what the MLLM roles answer: verdicts, criteria lists, skill names and prompts."""

from __future__ import annotations

import json
import re
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


def parse_criteria(answer: str) -> list[str]:
    """Parse a JSON array of yes/no questions; strings or objects with a `question` field are accepted.

    Raises:
        CriteriaParseError: when no JSON array of questions can be read from the answer.
    """
    text, _ = split_thinking(answer)
    for candidate in _json_candidates(text):
        try:
            data = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
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

    Reads a JSON array of `{"n", "answer", "why"}` objects (or answers in question order), else numbered lines
    (`1. yes - ...`). Questions missing from the answer, or whose answer is neither yes nor no, are left out: the
    caller asks those one by one, never passes them silently.
    """
    text, _ = split_thinking(answer)
    found: dict[int, tuple[bool, str]] = {}
    for candidate in _json_candidates(text):
        try:
            data = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(data, dict):
            data = data.get("answers") or data.get("results")
        if not isinstance(data, list):
            continue
        for position, item in enumerate(data, 1):
            number: Any = position
            said, why = item, ""
            if isinstance(item, dict):
                number = item.get("n", item.get("index", position))
                said = item.get("answer", item.get("verdict", ""))
                why = str(item.get("why", item.get("reason", "")) or "")
            verdict = parse_verdict(str(said)) if isinstance(said, str | bool) else None
            if isinstance(said, bool):
                verdict = said
            if isinstance(number, int) and 1 <= number <= count and verdict is not None:
                found.setdefault(number, (verdict, " ".join(why.split())[:200]))
        if found:
            return found
    for match in _NUMBERED_RE.finditer(text):
        number, rest = int(match.group(1)), match.group(2)
        verdict = parse_verdict(rest)
        if 1 <= number <= count and verdict is not None:
            found.setdefault(number, (verdict, " ".join(rest.split())[:200]))
    return found


_LESSON_RE = re.compile(r"^\s*\**\s*LESSON\s*\**\s*:\s*", re.I | re.M)
_NEXT_LABEL_RE = re.compile(r"^\s*\**\s*(PROMPT|INSTRUCTION|ACTION|REASON|TEXT)\s*\**\s*:", re.I | re.M)


def split_lesson(answer: str) -> tuple[str | None, str]:
    """A merged refiner's answer: (its `LESSON:` text or None, the rest: the prompt or the mode's own answer)."""
    text, _ = split_thinking(answer)
    mark = _LESSON_RE.search(text)
    if mark is None:
        return None, answer
    after = text[mark.end() :]
    nxt = _NEXT_LABEL_RE.search(after)
    lesson = after[: nxt.start()] if nxt else after.split("\n\n", 1)[0]
    rest = text[: mark.start()] + (after[nxt.start() :] if nxt else after[len(lesson) :])
    return (" ".join(lesson.split()) or None), rest.strip()
