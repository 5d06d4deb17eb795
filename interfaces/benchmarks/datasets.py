"""Prompt sets: GenEval, GenEval2, DPG-Bench, plain text and JSONL, read from paths the user gives.

No benchmark data ships with gems (GenEval2 is CC BY-NC 4.0); point `gems bench` at your own copy:
- GenEval `prompts/evaluation_metadata.jsonl`: one object per line with `prompt`, `tag`, `include`;
- GenEval2 `geneval2_data.jsonl`: `prompt`, `atom_count`, `vqa_list` ([question, expected answer] atoms), `skills`;
- DPG-Bench: a folder of `.txt` files, one prompt per file (the file name is the id);
- a `.txt` file with one prompt per line, or `.jsonl` with `prompt` (and optional `id`, `category`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gems.configs.errors import GemsError


class DatasetError(GemsError, ValueError):
    """A prompt file cannot be read; the message names the file and line."""

    exit_code = 2


@dataclass
class BenchPrompt:
    """One benchmark item.

    `atoms` are GenEval2's [question, expected answer] pairs, used by Soft-TIFA; `meta` keeps what the official
    scorers need: GenEval2's per-atom `skills` and `atom_count`, GenEval's whole metadata `record`.
    """

    id: str
    prompt: str
    categories: list[str] = field(default_factory=list)
    atoms: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Each non-blank line as it is written and as parsed."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path} line {number} is not JSON: {exc.msg}") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise DatasetError(f"{path} line {number} has no 'prompt' string")
        records.append((line, record))
    return records


def _geneval2(lines: list[tuple[str, dict[str, Any]]]) -> list[BenchPrompt]:
    items = []
    for i, (line, record) in enumerate(lines):
        atoms = [(str(q), str(a)) for q, a in record.get("vqa_list") or []]
        skills = record.get("skills") or []
        skills = [str(s) for s in (skills if isinstance(skills, list) else [skills])]
        categories = list(dict.fromkeys(skills))
        # The line as written: `gems bench export` hands the official script the selected prompts' own lines.
        meta = {"skills": skills, "atom_count": record.get("atom_count", len(atoms)), "line": line}
        items.append(BenchPrompt(str(record.get("id", f"{i:05d}")), record["prompt"], categories, atoms, meta))
    return items


def _geneval(records: list[dict[str, Any]]) -> list[BenchPrompt]:
    return [BenchPrompt(f"{i:05d}", r["prompt"], [str(r["tag"])], meta={"record": r}) for i, r in enumerate(records)]


def _plain_jsonl(records: list[dict[str, Any]]) -> list[BenchPrompt]:
    items = []
    for i, record in enumerate(records):
        category = record.get("category")
        items.append(BenchPrompt(str(record.get("id", f"{i:05d}")), record["prompt"], [category] if category else []))
    return items


def load_prompts(path: str | Path) -> tuple[str, list[BenchPrompt]]:
    """Read a prompt set and tell which format it was: geneval, geneval2, dpg, jsonl or text."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise DatasetError(f"{path} has no .txt prompt files (DPG-Bench: one prompt per file)")
        return "dpg", [BenchPrompt(f.stem, " ".join(f.read_text(encoding="utf-8").split())) for f in files]
    if not path.is_file():
        raise DatasetError(f"no such prompt file or folder: {path}")
    if path.suffix == ".jsonl":
        rows = _read_jsonl(path)
        records = [record for _, record in rows]
        if not records:
            raise DatasetError(f"{path} has no prompts")
        if "vqa_list" in records[0]:
            return "geneval2", _geneval2(rows)
        if "tag" in records[0] and "include" in records[0]:
            return "geneval", _geneval(records)
        return "jsonl", _plain_jsonl(records)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise DatasetError(f"{path} has no prompts")
    return "text", [BenchPrompt(f"{i:05d}", p) for i, p in enumerate(prompts)]


def stratum(item: BenchPrompt) -> str:
    """The group a stratified sample keeps in proportion: GenEval2's atom count, else the first category."""
    if "atom_count" in item.meta:
        return f"atoms={item.meta['atom_count']}"
    return item.categories[0] if item.categories else "all"


def stratified_sample(items: list[BenchPrompt], k: int, seed: int) -> list[BenchPrompt]:
    """`k` items drawn per stratum in proportion to its size (largest remainder), seeded, in file order.

    GenEval2's file is sorted by atom count, so its first 100 prompts are all 3-atom prompts; this keeps every
    atom count (or GenEval tag, or category) represented as in the whole set.
    """
    if k >= len(items):
        return list(items)
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(stratum(item), []).append(index)
    quotas = {name: k * len(members) / len(items) for name, members in groups.items()}
    counts = {name: int(q) for name, q in quotas.items()}
    by_remainder = sorted(groups, key=lambda name: (-(quotas[name] - counts[name]), name))
    for name in by_remainder[: k - sum(counts.values())]:
        counts[name] += 1
    rng = random.Random(seed)
    chosen = [i for name in sorted(groups) for i in rng.sample(groups[name], counts[name])]
    return [items[i] for i in sorted(chosen)]
