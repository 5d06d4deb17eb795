"""Regenerate gems' table of the official GenEval2 judge's first tokens from a Qwen2-family tokenizer folder.

GenEval2's evaluation.py adds, for each answer string, the probability of `tokenizer.encode(answer)[0]` under
Qwen/Qwen3-VL-8B-Instruct, whose tokenizer is Qwen2's byte-level BPE (the same vocab.json and merges.txt from
Qwen2 to Qwen3; only added special tokens differ). This script loads such a folder (`tokenizer.json`, or
`vocab.json` + `merges.txt`) with transformers, checks it is that vocabulary (the special tokens' ids and strings
whose Qwen2 ids other projects pin in their tests: pre-tokenizer splits, NFC, digits, CJK), and writes
`interfaces/benchmarks/first_tokens.py` with the first token of every answer string the official code builds:
the yes list, every number word from zero to twenty (capitalised, with a space) and the digits and "other".

    python bench/judge_first_tokens.py TOKENIZER_DIR [--source TEXT] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

TARGET = Path(__file__).resolve().parents[1] / "interfaces" / "benchmarks" / "first_tokens.py"
YES = ("Yes", "yes", " yes", " Yes")
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]  # fmt: skip
DIGITS = (*(str(n) for n in range(1, 11)), "other")  # evaluation.py's return_numeric_string: 1-10, else "other"
# Ids every Qwen2-family tokenizer gives: its special tokens, and strings other projects' tests pin.
KNOWN = {
    "<|endoftext|>": [151643], "<|im_start|>": [151644], "<|im_end|>": [151645],
    "Hello, world!": [9707, 11, 1879, 0],
    "Name one JVM language.": [675, 825, 72379, 4128, 13],
    "Phoenix \u2192 \u6771\u4eac caf\u00e9": [78825, 11397, 60596, 109, 46553, 51950],
    "cafe\u0301": [924, 58858],  # NFC first
    "Line 1\nLine 22\n": [2460, 220, 16, 198, 2460, 220, 17, 17, 198],
    "I\u2019M I'm we're they've I'll I'd": [40, 527, 44, 358, 2776, 582, 2299, 807, 3003, 358, 3278, 358, 4172],
}  # fmt: skip


def answer_strings() -> list[str]:
    strings = list(YES)
    for word in WORDS:
        strings += [word, word.capitalize(), " " + word, " " + word.capitalize()]
    for digit in DIGITS:
        strings += [digit, " " + digit]
    return strings


def load(folder: Path) -> Any:
    from transformers import AutoTokenizer

    merges = folder / "merges.txt"
    if merges.is_file() and b"\r" in merges.read_bytes():  # each line would end in a stray CR: no merge applies
        sys.exit(f"{merges} has CR line endings (a Windows checkout): convert it to LF first")
    return AutoTokenizer.from_pretrained(folder)


def first_tokens(tokenizer: Any) -> dict[str, tuple[int, str]]:
    table = {}
    for answer in answer_strings():
        first = tokenizer.encode(answer)[0]  # as evaluation.py: special tokens as the tokenizer adds them (none)
        table[answer] = (first, tokenizer.decode([first]))
    return table


def provenance(folder: Path) -> list[str]:
    names = [n for n in ("tokenizer.json", "vocab.json", "merges.txt") if (folder / n).is_file()]
    return [f"{n} sha256 {hashlib.sha256((folder / n).read_bytes()).hexdigest()}" for n in names]


def render(table: dict[str, tuple[int, str]], folder: Path, source: str | None) -> str:
    def quoted(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    lines = [
        '"""First tokens of GenEval2\'s answer strings under its judge\'s tokenizer (generated: do not edit).',
        "",
        "Qwen/Qwen3-VL-8B-Instruct uses Qwen2's byte-level BPE. Each entry is `answer: (id, token text)` with the id",
        "`tokenizer.encode(answer)[0]`, as GenEval2's evaluation.py takes it, and the text `tokenizer.decode([id])`,",
        "as an OpenAI-compatible server names the token in its logprobs. Computed by",
        "`python bench/judge_first_tokens.py TOKENIZER_DIR` from a Qwen2 tokenizer folder whose special tokens and",
        "known ids it checked first" + (":" if source is None else f", from {source}:"),
        *(f"- {line}" for line in provenance(folder)),
        '"""',
        "",
        "QWEN3_VL_FIRST_TOKENS: dict[str, tuple[int, str]] = {",
        *(f"    {quoted(answer)}: ({ident}, {quoted(text)})," for answer, (ident, text) in table.items()),
        "}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a Qwen2-family tokenizer folder")
    parser.add_argument("--source", help="where the folder's files came from, for the table's docstring")
    parser.add_argument("--check", action="store_true", help="compare with the shipped table instead of writing it")
    args = parser.parse_args()
    tokenizer = load(args.folder)
    for text, ids in KNOWN.items():
        got = tokenizer.encode(text)
        if got != ids:
            sys.exit(f"not Qwen2's tokenizer: {text!r} encodes as {got}, not {ids}")
    table = first_tokens(tokenizer)
    text = render(table, args.folder, args.source)
    if args.check:
        shipped: dict[str, Any] = {}
        exec(compile(TARGET.read_text(encoding="utf-8"), str(TARGET), "exec"), shipped)
        same = shipped["QWEN3_VL_FIRST_TOKENS"] == table
        print(f"{TARGET} {'matches' if same else 'DIFFERS from'} this tokenizer")
        sys.exit(0 if same else 1)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {len(table)} answer strings to {TARGET}")
    for answer in ("eleven", "twelve", " eleven", " 2", "10"):
        print(f"  {answer!r:>10} -> {table[answer]}")


if __name__ == "__main__":
    main()
