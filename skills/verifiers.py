"""Verification tools that skills bring to the critique step, next to the MLLM's yes/no verdict.

A skill declares them in its front matter (`metadata: verifiers: [ocr]`); the critique runs them only while that
skill is loaded, and only on criteria they apply to.

The OCR rule, for a criterion that quotes the exact text the image must show:
- OCR reads the quoted text (case, spacing and punctuation ignored): `match`, the MLLM's verdict stands;
- OCR reads something close to it but different (similarity >= 0.6, e.g. a misspelling): `mismatch`, the
  criterion fails whatever the MLLM said, since vision models often accept misspelled words;
- OCR reads nothing like it (stylised, curved or tiny lettering it cannot read): `unreadable`, the MLLM's
  verdict stands.
So OCR can veto a lenient "yes" but never turns a "no" into a pass. Both readings go into the trajectory.
"""

from __future__ import annotations

import difflib
import functools
import re
import threading
import unicodedata
from pathlib import Path
from typing import Any

QUOTE_PATTERNS = [
    re.compile(r'"([^"]{1,200})"'),
    re.compile(r"“([^“”]{1,200})”"),
    re.compile(r"「([^「」]{1,200})」"),
    re.compile(r"『([^『』]{1,200})』"),
    re.compile(r"‘([^‘’]{1,200})’"),
    # Plain single quotes only when not inside a word, so "the cat's sign" is not a quote.
    re.compile(r"(?<!\w)'([^']{1,200})'(?!\w)"),
]
MISMATCH_SIMILARITY = 0.6


class VerifierUnavailable(RuntimeError):
    """A declared verifier cannot run here (its optional dependency is missing)."""


def quoted_texts(criterion: str) -> list[str]:
    """Exact strings a criterion quotes: "OPEN", “Hello”, 「拉面」, 'Hi' (apostrophes inside words are not quotes)."""
    found: list[str] = []
    for pattern in QUOTE_PATTERNS:
        for match in pattern.finditer(criterion):
            text = match.group(1).strip()
            if text and text not in found:
                found.append(text)
    return found


def normalise(text: str) -> str:
    """Casefold, drop punctuation and spacing, keep letters, digits and CJK characters."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if ch.isalnum())


def compare(target: str, reading: str) -> tuple[str, float]:
    """Classify an OCR reading against the target text: match, mismatch or unreadable, with the best similarity."""
    want, got = normalise(target), normalise(reading)
    if not want:
        return "unreadable", 0.0
    if want in got:
        return "match", 1.0
    best = 0.0
    width = len(want)
    for size in {max(1, width - 2), width - 1, width, width + 1, width + 2}:
        if size <= 0:
            continue
        for start in range(0, max(1, len(got) - size + 1)):
            ratio = difflib.SequenceMatcher(None, want, got[start : start + size]).ratio()
            best = max(best, ratio)
    return ("mismatch" if best >= MISMATCH_SIMILARITY else "unreadable"), round(best, 3)


@functools.lru_cache(maxsize=1)
def _ocr_engine() -> Any:
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        raise VerifierUnavailable("the ocr verifier needs the ocr extra: pip install 'gems-agent[ocr]'") from None
    return RapidOCR()


_ocr_lock = threading.Lock()


def read_text(image_path: str | Path) -> str:
    """All text OCR finds in the image, in reading order, joined by spaces."""
    engine = _ocr_engine()
    with _ocr_lock:
        result, _ = engine(str(image_path))
    return " ".join(item[1] for item in result or [])


def ocr_check(criterion: str, image_path: str | Path) -> dict[str, Any] | None:
    """Run OCR for a criterion that quotes text; None when the criterion quotes nothing."""
    targets = quoted_texts(criterion)
    if not targets:
        return None
    reading = read_text(image_path)
    results = [compare(target, reading) for target in targets]
    statuses = [status for status, _ in results]
    status = (
        "mismatch" if "mismatch" in statuses else ("match" if all(s == "match" for s in statuses) else "unreadable")
    )
    return {"tool": "ocr", "targets": targets, "reading": reading[:500], "status": status,
            "similarity": min(score for _, score in results)}  # fmt: skip


def combine(mllm_passed: bool, check: dict[str, Any] | None) -> bool:
    """Apply the documented rule: OCR vetoes a pass on a mismatch, and otherwise the MLLM's verdict stands."""
    if check is not None and check["status"] == "mismatch":
        return False
    return mllm_passed


VERIFIERS = {"ocr": ocr_check}
