"""Which prompts a bench folder holds: one prompt file (by the sha256 of its bytes) and one selection of it.

A selection is all prompts, the first K (`--first`), or a seeded stratified sample of K (`--limit`,
`--sample-seed`), then optionally one shard of it (`--shard K/N`). `run.json` records the file's digest and the
selection, so a resume, a merge and an export can check they read the same prompts, and can rebuild the list.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gems.configs import ConfigError
from gems.interfaces.benchmarks.datasets import BenchPrompt, stratified_sample


def prompts_digest(path: str | Path) -> str:
    """sha256 of the prompt file's bytes; for a DPG folder, of every `.txt` file's name and bytes, sorted."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(path.glob("*.txt")):
            digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`"K/N"` -> (K, N) with 1 <= K <= N; None for no sharding."""
    if text is None:
        return None
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise ConfigError(f"--shard must be K/N with 1 <= K <= N (e.g. 2/8), not {text!r}")
    return int(k), int(n)


@dataclass(frozen=True)
class Selection:
    """The prompts of a file a run takes: `--limit` or `--first`, `--sample-seed`, `--shard`."""

    limit: int | None = None
    first: int | None = None
    sample_seed: int = 0
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.first is not None:
            raise ConfigError("give --limit K (a stratified sample) or --first K (the first K prompts), not both")
        for flag, value in (("--limit", self.limit), ("--first", self.first)):
            if value is not None and value <= 0:
                raise ConfigError(f"{flag} must be 1 or more, not {value}")

    @classmethod
    def recorded(cls, run: dict[str, Any]) -> Selection:
        """The selection a `run.json` records (older folders: the kind and size it recorded)."""
        record = run.get("selection") or {}
        shard = parse_shard(run["shard"]) if run.get("shard") else None
        if "limit" in record or "first" in record:
            seed = record.get("sample_seed")
            return cls(record.get("limit"), record.get("first"), 0 if seed is None else seed, shard)
        kind = record.get("kind")
        if kind == "stratified":
            return cls(limit=record.get("k"), sample_seed=record.get("seed") or 0, shard=shard)
        return cls(first=record.get("k") if kind == "first" else None, shard=shard)

    def spec(self) -> dict[str, Any]:
        """What decides the prompts (the seed only when it draws a sample); part of a run's identity."""
        return {"limit": self.limit, "first": self.first, "sample_seed": self.sample_seed if self.limit else None}

    def flags(self, shard: bool = True) -> str:
        """The selection as the command line spells it, e.g. `--limit 8 --sample-seed 0 --shard 2/4`."""
        if self.limit is not None:
            text = f"--limit {self.limit} --sample-seed {self.sample_seed}"
        else:
            text = "all prompts" if self.first is None else f"--first {self.first}"
        return text + (f" --shard {self.shard[0]}/{self.shard[1]}" if shard and self.shard else "")

    def choose(self, items: list[BenchPrompt]) -> tuple[list[BenchPrompt], dict[str, Any]]:
        """The selected prompts before sharding, and the record `run.json` keeps of them."""
        if self.first is not None:
            chosen, kind = items[: self.first], "first"
        elif self.limit is not None:
            chosen, kind = stratified_sample(items, self.limit, self.sample_seed), "stratified"
        else:
            chosen, kind = items, "all"
        record: dict[str, Any] = {"kind": kind, "k": len(chosen), "of": len(items), **self.spec()}
        if kind == "stratified":
            record["ids"] = [item.id for item in chosen]
        return chosen, record

    def shard_of(self, items: list[BenchPrompt]) -> list[BenchPrompt]:
        """Shard K of N: every N-th prompt of the selection from the K-th, so each shard gets a mix of categories."""
        if self.shard is None:
            return items
        k, n = self.shard
        return items[k - 1 :: n]


def select_items(
    items: list[BenchPrompt], limit: int | None, first: int | None, seed: int
) -> tuple[list[BenchPrompt], dict[str, Any]]:
    """The prompts to run: all, the first K, or a seeded stratified sample of K; plus a record of the choice."""
    return Selection(limit, first, seed).choose(items)
