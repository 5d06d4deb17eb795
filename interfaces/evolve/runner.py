"""One evolution cycle: lessons from the training prompts, proposals from the LLM, each tried on the test prompts.

For each round: run the training prompts with the current library (`gems bench`, method gems) and turn every run
into its lesson; ask the proposer for changes; validate each against the library (the registry's rules plus
`metadata.examples`); run the test prompts with the library before and after the change (same seeds, the bench's
scorer) and keep the change only when the test score rises by `margin` and no category falls by more than
`max_drop`. Accepted changes build `DIR/library/` (the whole evolved library); rejected ones go to
`DIR/rejected/<id>/` with their scores. Every proposal and decision is appended to `DIR/evolution.jsonl`, which
later cycles read so a turned-down change is never tried again unchanged. Runs of the same library and settings
share one bench folder under `DIR/runs/`, so a re-run continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gems.configs import GemsSettings, UsageError
from gems.configs.loading import RESUME_IGNORES, settings_digest
from gems.interfaces.benchmarks.datasets import load_prompts
from gems.interfaces.benchmarks.runner import run_bench
from gems.interfaces.evolve.report import write_reports
from gems.memory.aio import run_blocking
from gems.memory.experiences import lesson_from_state
from gems.nodes.calls import ask
from gems.nodes.prompts.evolve import propose_system, propose_user
from gems.skills import load_registry, registry_for
from gems.skills.evolution import (
    EvolutionLog,
    Proposal,
    ProposalError,
    apply_proposal,
    library_diff,
    library_digest,
    materialize,
    parse_proposals,
    proposal_record,
    replaced_texts,
    skill_texts,
    undone,
    validate,
)

LOG_NAME = "evolution.jsonl"


@dataclass
class EvolveOptions:
    """How a cycle runs and what it accepts (scores on the bench scorer's 0-100 scale)."""

    rounds: int = 1
    proposals: int = 3
    margin: float = 1.0
    max_drop: float = 5.0
    concurrency: int = 4


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def check_disjoint(train: Path, test: Path) -> tuple[int, int]:
    """Both prompt sets load and share no prompt; returns their sizes.

    Raises:
        UsageError: a prompt is in both sets (held-out prompts must be new), or a set cannot be read.
    """
    _, train_items = load_prompts(train)
    _, test_items = load_prompts(test)
    shared = sorted({_key(p.prompt) for p in train_items} & {_key(p.prompt) for p in test_items})
    if shared:
        raise UsageError(
            f"--train and --test share {len(shared)} prompt(s), e.g. {shared[0]!r}; test prompts must be held out"
        )
    return len(train_items), len(test_items)


def _with_library(settings: GemsSettings, library: Path, seed: int) -> GemsSettings:
    """The settings a bench of this library runs with: only its skills, no lessons carried, fixed seeds."""
    return settings.model_copy(
        update={
            "skills": settings.skills.model_copy(update={"enabled": True, "paths": [library], "bundled": False}),
            "memory": settings.memory.model_copy(update={"lessons": False}),
            "loop": settings.loop.model_copy(update={"seed": seed}),
        }
    )


class _Bench:
    """Runs of a prompt set with a library, one folder per (prompt set, library, settings)."""

    def __init__(self, settings: GemsSettings, runs: Path, seed: int, concurrency: int, say: Any):
        self.settings, self.runs, self.seed, self.concurrency, self.say = settings, runs, seed, concurrency, say

    def run(self, prompts: Path, library: Path, label: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        probe = _with_library(self.settings, library, self.seed)
        ident = library_digest(library) + settings_digest(probe, RESUME_IGNORES | {"paths"}) + str(prompts)
        out = self.runs / f"{label}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"
        # The run reads its own copy of the library, at a path that is part of the run's identity.
        copy = out.with_name(out.name + ".library")
        if not copy.is_dir():
            shutil.copytree(library, copy)
        settings = _with_library(self.settings, copy, self.seed)
        started = time.perf_counter()
        summary = run_bench(prompts, settings, "gems", out, concurrency=self.concurrency, progress=False)
        records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "results").glob("*.json"))]
        self.say(f"  {label}: {len(records)} prompts, score {_fmt(score_of(summary)['score'])} "
                 f"({time.perf_counter() - started:.1f}s)")  # fmt: skip
        return summary, records


def score_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The bench's main score and its per-category scores, with the metric's label (0-100)."""
    scores = summary.get("scores") or {}
    key = next((k for k in ("soft_tifa_gm", "self_check") if k in scores), None)
    if summary.get("by_skill"):
        categories = {k: round(v["soft_tifa_am"], 3) for k, v in summary["by_skill"].items()}
    else:
        categories = {k: round(v["self_check"], 3) for k, v in (summary.get("by_category") or {}).items()}
    return {
        "metric": summary.get("metric"),
        "key": key,
        "score": round(scores[key], 3) if key else None,
        "by_category": categories,
        "errors": summary.get("errors") or [],
        "cost": summary.get("cost_total") or {},
        "wall_s": summary.get("wall_s"),
    }


def decide(before: dict[str, Any], after: dict[str, Any], margin: float, max_drop: float) -> tuple[bool, str]:
    """Accept when the test score rises by at least `margin` and no category falls by more than `max_drop`."""
    if before["score"] is None or after["score"] is None:
        failed = after["errors"] or before["errors"]
        return False, "the test run did not score every prompt" + (f": {failed[0]}" if failed else "")
    delta = after["score"] - before["score"]
    drops = {c: before["by_category"][c] - v for c, v in after["by_category"].items() if c in before["by_category"]}
    worst = max(drops, key=lambda c: drops[c], default=None)
    if worst is not None and drops[worst] > max_drop:
        return False, f"category {worst} fell {drops[worst]:.2f} points (more than --max-drop {max_drop:g})"
    if delta < margin:
        return False, f"test score {delta:+.2f} points (needs at least +{margin:g})"
    return True, f"test score {delta:+.2f} points (>= +{margin:g}), no category fell more than {max_drop:g}"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _lessons(records: list[dict[str, Any]], settings: GemsSettings) -> list[str]:
    out = []
    for record in records:
        lesson = lesson_from_state(record, settings, str(record.get("id") or ""))
        if lesson is not None:
            skill = f" Skill used: {record.get('skill')}." if record.get("skill") else " No skill was used."
            out.append(lesson.brief() + skill)
    return out


def _propose(settings: GemsSettings, system: str, user: str) -> Any:
    return run_blocking(ask(settings.mllm, system, user))


def evolve(
    train: str | Path,
    test: str | Path,
    settings: GemsSettings,
    out: str | Path,
    options: EvolveOptions | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one evolution cycle into `out` (a later call with the same `out` runs the next cycle).

    Returns:
        The cycle's summary: the proposals with their decisions, the library's score before and after.

    Raises:
        UsageError: overlapping or unreadable prompt sets.
        GemsError: an endpoint or the bench failed (the log keeps every decision made so far).
    """
    options = options or EvolveOptions()
    train, test, out = Path(train), Path(test), Path(out)
    check_disjoint(train, test)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)
    log = EvolutionLog(out / LOG_NAME)
    cycle = log.cycles() + 1
    library = out / "library"
    if not library.is_dir():  # the first cycle starts from the user's library, copied; later ones from the last
        materialize(registry_for(settings), library)
    start = out / "cycles" / f"{cycle}" / "start"
    if start.exists():
        shutil.rmtree(start)
    shutil.copytree(library, start)
    seed = settings.loop.seed if settings.loop.seed is not None else 0
    bench = _Bench(settings, out / "runs", seed, options.concurrency, say)
    decisions: list[dict[str, Any]] = []
    say(f"gems skills evolve: cycle {cycle}, {len(skill_texts(library))} skills, {out}")
    before_cycle: dict[str, Any] | None = None
    for round_no in range(1, options.rounds + 1):
        say(f"round {round_no}: lessons from the training prompts")
        _, train_records = bench.run(train, library, "train")
        lessons = _lessons(train_records, settings)
        baseline = score_of(bench.run(test, library, "test")[0])
        before_cycle = before_cycle or baseline
        blocked = log.blocked()
        reply = _propose(
            settings,
            propose_system(options.proposals),
            propose_user(skill_texts(library), lessons, list(blocked.values())),
        )
        try:
            proposals = parse_proposals(reply.text)[: options.proposals]
        except ProposalError as exc:
            log.append(
                {"cycle": cycle, "round": round_no, "decision": "unreadable", "reason": str(exc), "time": _now()}
            )
            say(f"  the proposer's answer could not be read: {exc}")
            continue
        say(f"  {len(proposals)} proposal(s)")
        accepted_digests = {e["digest"] for e in log.entries() if e.get("decision") == "accepted"}
        for k, proposal in enumerate(proposals, 1):
            entry = _try(
                proposal, f"c{cycle}-r{round_no}-p{k}", library, baseline, blocked, accepted_digests,
                bench, test, out, options, lessons,
            )  # fmt: skip
            entry.update(cycle=cycle, round=round_no, usage=reply.usage if k == 1 else {}, time=_now())
            log.append(entry)
            decisions.append(entry)
            say(f"  {entry['id']} {entry['label']}: {entry['decision']} ({entry['reason']})")
            if entry["decision"] == "accepted":
                baseline = entry["after"]
                accepted_digests.add(entry["digest"])
                for old in undone(log.entries(), library):  # this change put back what an earlier one replaced
                    log.append({"cycle": cycle, "round": round_no, "decision": "reverted", "digest": old["digest"],
                                "reverted_id": old["id"], "label": old.get("label"), "rationale": old.get("rationale"),
                                "reason": f"undone by {entry['id']}", "time": _now()})  # fmt: skip
                    accepted_digests.discard(old["digest"])
                    say(f"  {old['id']} {old.get('label')}: reverted by {entry['id']}")
    after_cycle = score_of(bench.run(test, library, "test")[0]) if decisions else before_cycle
    summary = {
        "cycle": cycle,
        "train": str(train),
        "test": str(test),
        "options": options.__dict__,
        "before": before_cycle,
        "after": after_cycle,
        "proposals": decisions,
        "library": str(library),
        "diff": library_diff(start, library),
    }
    (out / "cycles" / f"{cycle}" / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    write_reports(out, log.entries())
    say(f"done: {sum(e['decision'] == 'accepted' for e in decisions)} accepted; report {out / 'report.md'}")
    return summary


def _try(
    proposal: Proposal,
    ident: str,
    library: Path,
    baseline: dict[str, Any],
    blocked: dict[str, dict[str, Any]],
    accepted: set[str],
    bench: _Bench,
    test: Path,
    out: Path,
    options: EvolveOptions,
    lessons: list[str],
) -> dict[str, Any]:
    """Validate and test one proposal; accepted: `library` becomes the changed library."""
    entry: dict[str, Any] = {"id": ident, **proposal_record(proposal), "before": baseline}
    entry["lesson_texts"] = [_lesson_text(ref, lessons) for ref in proposal.lessons]
    earlier = blocked.get(proposal.digest())
    if earlier is not None or proposal.digest() in accepted:
        why = f"{earlier['decision']} in cycle {earlier.get('cycle')} ({earlier.get('id')})" if earlier else "accepted"
        return {**entry, "decision": "repeat", "reason": f"the same change was {why}; not tried again"}
    try:
        validate(proposal, load_registry((library,), include_bundled=False))
    except ProposalError as exc:
        _keep_rejected(out / "rejected" / ident, proposal, entry)
        return {**entry, "decision": "invalid", "reason": str(exc)}
    candidate = out / "candidates" / ident
    if candidate.exists():
        shutil.rmtree(candidate)
    entry["replaced"] = replaced_texts(library, proposal)
    apply_proposal(library, proposal, candidate)
    entry["diff"] = library_diff(library, candidate)
    after = score_of(bench.run(test, candidate, "test")[0])
    accepted_now, reason = decide(baseline, after, options.margin, options.max_drop)
    entry.update(after=after, decision="accepted" if accepted_now else "rejected", reason=reason)
    if accepted_now:
        shutil.rmtree(library)
        shutil.copytree(candidate, library)
    else:
        _keep_rejected(out / "rejected" / ident, proposal, entry)
    shutil.rmtree(candidate)
    return entry


def _lesson_text(ref: str, lessons: list[str]) -> str:
    digits = ref.strip().upper().removeprefix("L")
    if digits.isdigit() and 1 <= int(digits) <= len(lessons):
        return f"{ref}: {lessons[int(digits) - 1]}"
    return ref


def _keep_rejected(folder: Path, proposal: Proposal, entry: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if proposal.skill_md.strip():
        (folder / "SKILL.md").write_text(proposal.skill_md.strip() + "\n", encoding="utf-8")
    (folder / "result.json").write_text(json.dumps(entry, indent=1, default=str) + "\n", encoding="utf-8")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def apply_library(folder: str | Path, dest: str | Path, whole: bool = False) -> dict[str, Any]:
    """Copy what evolution accepted in `folder` into the skills folder `dest`.

    Without `whole`: the skills accepted changes created or revised are written to `dest`, and skills they deleted
    or merged away are removed from `dest` when they live there. With `whole`: every skill of the evolved library
    is written (use it with `skills.bundled: false` when changes touch bundled skills).

    Raises:
        UsageError: `folder` holds no evolution run.
    """
    folder, dest = Path(folder), Path(dest)
    library = folder / "library"
    log = EvolutionLog(folder / LOG_NAME)
    if not library.is_dir() or not log.path.is_file():
        raise UsageError(f"{folder} holds no gems skills evolve run (no library/ and {LOG_NAME})")
    accepted = [e for e in log.entries() if e.get("decision") == "accepted"]
    present = set(skill_texts(library))
    written, removed = [], []
    dest.mkdir(parents=True, exist_ok=True)
    names = sorted(present) if whole else sorted({e["name"] for e in accepted if e.get("name") in present})
    gone = {t for e in accepted if e.get("op") in ("delete", "merge") for t in e.get("targets") or []} - present
    for name in names:
        if (dest / name).exists():
            shutil.rmtree(dest / name)
        shutil.copytree(library / name, dest / name)
        written.append(name)
    for name in sorted(gone):
        if (dest / name / "SKILL.md").is_file():
            shutil.rmtree(dest / name)
            removed.append(name)
    bundled = set(load_registry((), include_bundled=True).names())
    touched = {e.get("name") for e in accepted} | {t for e in accepted for t in e.get("targets") or []}
    return {
        "written": written,
        "removed": removed,
        "accepted": len(accepted),
        "touches_bundled": sorted(touched & bundled),
    }
