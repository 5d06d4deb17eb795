"""Skill evolution, the library side: proposals to change a SKILL.md library, validated and applied to a copy.

A proposal creates a skill, revises one, merges two into one, or deletes one; every proposal but a deletion carries
a complete SKILL.md. Nothing here touches a user's library: `materialize` copies a registry's skills into a folder
and `apply_proposal` writes the changed library into another. The evolution log (JSONL) remembers every proposal by
its `digest`, so a rejected change is never tried again unchanged. Running prompts and scoring live in
`gems.interfaces.evolve`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from gems.configs import GemsError
from gems.skills.registry import Skill, SkillError, SkillRegistry, parse_skill_file

Op = Literal["create", "revise", "merge", "delete"]
OPS: tuple[str, ...] = ("create", "revise", "merge", "delete")
TARGETS = {"create": 0, "revise": 1, "merge": 2, "delete": 1}  # existing skills each operation names
BLOCKING = ("rejected", "invalid", "reverted")  # decisions that keep a proposal from being tried again unchanged


class ProposalError(GemsError, ValueError):
    """A proposal cannot be read or does not fit the library; the message says why in one line."""


@dataclass
class Proposal:
    """One change to the library, as the proposer wrote it."""

    op: str
    targets: list[str] = field(default_factory=list)
    skill_md: str = ""
    rationale: str = ""
    lessons: list[str] = field(default_factory=list)

    @property
    def name(self) -> str | None:
        """The skill the change writes (create, revise, merge), from the SKILL.md's front matter."""
        match = re.search(r"^name:\s*['\"]?([a-z0-9-]+)['\"]?\s*$", self.skill_md, re.MULTILINE)
        return match.group(1) if match else None

    def digest(self) -> str:
        """What makes two proposals the same change: the operation, its targets and the SKILL.md text."""
        body = "\n".join(line.rstrip() for line in self.skill_md.strip().splitlines())
        text = json.dumps([self.op, sorted(self.targets), body])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def label(self) -> str:
        if self.op == "create":
            return f"create {self.name}"
        if self.op == "merge":
            return f"merge {' + '.join(self.targets)} -> {self.name}"
        return f"{self.op} {', '.join(self.targets)}"


_FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_proposals(answer: str) -> list[Proposal]:
    """Read the proposer's JSON (a list, or an object with `proposals`), fenced or bare.

    Raises:
        ProposalError: no JSON list of proposals could be read.
    """
    candidates = [m.strip() for m in _FENCE_RE.findall(answer)]
    for opener, closer in (("[", "]"), ("{", "}")):
        start, end = answer.find(opener), answer.rfind(closer)
        if start != -1 and end > start:
            candidates.append(answer[start : end + 1])
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            data = data.get("proposals", [data] if "op" in data else None)
        if not isinstance(data, list):
            continue
        out = []
        for item in data:
            if not isinstance(item, dict):
                continue
            out.append(
                Proposal(
                    op=str(item.get("op", "")).strip().lower(),
                    targets=[str(t) for t in item.get("targets") or []],
                    skill_md=str(item.get("skill_md") or ""),
                    rationale=" ".join(str(item.get("rationale") or "").split()),
                    lessons=[str(x) for x in item.get("lessons") or []],
                )
            )
        return out
    raise ProposalError("the proposer's answer holds no JSON list of proposals")


def check_skill_md(text: str, name: str | None = None) -> Skill:
    """Validate a SKILL.md text the way the registry reads a file, plus `metadata.examples` (routing needs them).

    Raises:
        ProposalError: one line naming the problem.
    """
    name = name or Proposal("create", skill_md=text).name
    if not name:
        raise ProposalError("the SKILL.md has no valid name: line in its front matter")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name / "SKILL.md"
        path.parent.mkdir()
        path.write_text(text.strip() + "\n", encoding="utf-8")
        try:
            skill = parse_skill_file(path)
        except SkillError as exc:
            raise ProposalError(str(exc).replace(str(path), f"{name}/SKILL.md")) from None
    examples = skill.metadata.get("examples")
    if not isinstance(examples, list) or not examples or not all(isinstance(e, str) and e.strip() for e in examples):
        raise ProposalError(f"{name}/SKILL.md: metadata.examples must list at least one example request")
    return skill


def validate(proposal: Proposal, library: SkillRegistry) -> Skill | None:
    """Check a proposal against the library it would change; returns the new skill (None for a deletion).

    Raises:
        ProposalError: an unknown operation, wrong or missing targets, a name clash, or an invalid SKILL.md.
    """
    if proposal.op not in OPS:
        raise ProposalError(f"unknown operation {proposal.op!r}; use one of {', '.join(OPS)}")
    want = TARGETS[proposal.op]
    if len(proposal.targets) != want or len(set(proposal.targets)) != want:
        raise ProposalError(f"{proposal.op} names {want} distinct existing skill(s), got {proposal.targets}")
    missing = [t for t in proposal.targets if library.get(t) is None]
    if missing:
        raise ProposalError(f"{proposal.op}: no skill named {', '.join(missing)} in the library")
    if proposal.op == "delete":
        return None
    skill = check_skill_md(proposal.skill_md)
    if proposal.op == "revise" and skill.name != proposal.targets[0]:
        raise ProposalError(f"a revision of {proposal.targets[0]} must keep its name, not {skill.name}")
    if proposal.op in ("create", "merge") and skill.name in library.skills and skill.name not in proposal.targets:
        raise ProposalError(f"{proposal.op}: a skill named {skill.name} already exists; revise it instead")
    if proposal.op == "revise" and _same_text(library.skills[skill.name].path.read_text(encoding="utf-8"), proposal):
        raise ProposalError(f"the revision of {skill.name} changes nothing")
    return skill


def _same_text(current: str, proposal: Proposal) -> bool:
    return current.strip() == proposal.skill_md.strip()


def materialize(library: SkillRegistry, dest: Path) -> Path:
    """Copy every skill folder of `library` into `dest` (which must not exist yet); returns `dest`."""
    dest.mkdir(parents=True)
    for skill in library.skills.values():
        shutil.copytree(skill.folder, dest / skill.name, symlinks=False)
    return dest


def apply_proposal(source: Path, proposal: Proposal, dest: Path) -> Path:
    """Write the library in `source` with `proposal` applied to `dest` (a new folder); `source` is not touched."""
    shutil.copytree(source, dest, symlinks=False)
    for target in proposal.targets:
        if proposal.op in ("delete", "merge"):
            shutil.rmtree(dest / target)
    if proposal.op != "delete":
        name = proposal.name
        assert name is not None
        (dest / name).mkdir(exist_ok=True)
        (dest / name / "SKILL.md").write_text(proposal.skill_md.strip() + "\n", encoding="utf-8")
    return dest


def skill_texts(folder: Path) -> dict[str, str]:
    """Each `<name>/SKILL.md` text in a library folder, by name."""
    return {p.parent.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*/SKILL.md"))}


def library_diff(before: Path, after: Path) -> str:
    """A unified diff of the SKILL.md files that differ between two library folders."""
    old, new = skill_texts(before), skill_texts(after)
    chunks = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) == new.get(name):
            continue
        a = (old.get(name) or "").splitlines(keepends=True)
        b = (new.get(name) or "").splitlines(keepends=True)
        label_a = f"a/{name}/SKILL.md" if name in old else "/dev/null"
        label_b = f"b/{name}/SKILL.md" if name in new else "/dev/null"
        chunks.append("".join(difflib.unified_diff(a, b, label_a, label_b)))
    return "".join(chunks)


def library_digest(folder: Path) -> str:
    """sha256 (16 hex) of a library folder's SKILL.md texts: runs of the same library share their results."""
    text = json.dumps(skill_texts(folder), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class EvolutionLog:
    """The JSONL record of every proposal, its scores and the decision; later cycles read it."""

    def __init__(self, path: Path):
        self.path = path

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash; the rest stands
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def append(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
            fh.flush()

    def blocked(self) -> dict[str, dict[str, Any]]:
        """Proposals that must not be tried again unchanged, by digest (the latest decision wins)."""
        latest: dict[str, dict[str, Any]] = {}
        for entry in self.entries():
            if entry.get("digest"):
                latest[entry["digest"]] = entry
        return {d: e for d, e in latest.items() if e.get("decision") in BLOCKING}

    def cycles(self) -> int:
        return max((int(e.get("cycle", 0)) for e in self.entries()), default=0)


def replaced_texts(library: Path, proposal: Proposal) -> dict[str, str | None]:
    """The SKILL.md texts a proposal replaces, by name (None: the skill did not exist), to tell a later revert."""
    texts = skill_texts(library)
    names = [*proposal.targets, *([proposal.name] if proposal.name else [])]
    return {name: texts.get(name) for name in dict.fromkeys(names)}


def undone(entries: list[dict[str, Any]], library: Path) -> list[dict[str, Any]]:
    """Accepted changes that the library no longer carries because every skill they touched is back as it was.

    A change that is undone is logged as `reverted`, so it is not proposed again unchanged.
    """
    texts = skill_texts(library)
    reverted = {e.get("reverted_id") for e in entries if e.get("decision") == "reverted"}
    out = []
    for entry in entries:
        if entry.get("decision") != "accepted" or entry.get("id") in reverted or not entry.get("replaced"):
            continue
        if all(texts.get(name) == old for name, old in entry["replaced"].items()):
            out.append(entry)
    return out


def proposal_record(proposal: Proposal) -> dict[str, Any]:
    """The proposal's fields as the log stores them."""
    return {**asdict(proposal), "digest": proposal.digest(), "name": proposal.name, "label": proposal.label()}
