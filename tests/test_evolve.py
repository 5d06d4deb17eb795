"""`gems skills evolve` and `gems skills apply`: proposals from lessons, tried on held-out prompts, logged.

Scripted servers: the router picks the proposed skill when it exists, the enhancer doubles the colour word only when
the loaded skill says so, and the verifier passes "Is the cat red?" only for a prompt that says "red red". So a
skill with that wording raises the held-out score and one without it does not.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from gems.configs import UsageError
from gems.interfaces.evolve import EvolveOptions, apply_library, evolve
from gems.interfaces.evolve.runner import decide
from gems.skills import load_registry
from gems.skills.evolution import Proposal, ProposalError, check_skill_md, parse_proposals, validate
from tests.support.servers import user_text
from tests.test_cli import error_lines, gems

CAT, RED = "Is there a cat?", "Is the cat red?"
MAGIC = "Say the colour word twice"
USER_SKILL = """---
name: plain-style
description: Keeps photos plain. Use for requests about plain product photos.
metadata:
  examples:
    - a plain photo of a mug
---
# Plain style

Describe the object and a plain background.
"""


def skill_md(body: str, name: str = "red-emphasis") -> str:
    return (
        f"---\nname: {name}\ndescription: Makes colours stick. Use when a request names an object's colour.\n"
        f"metadata:\n  examples:\n    - a red cat\n---\n# Colour emphasis\n\n{body}\n"
    )


def proposal_json(body: str, op: str = "create", targets: list[str] | None = None, name: str = "red-emphasis") -> str:
    item = {"op": op, "targets": targets or [], "skill_md": skill_md(body, name), "rationale": "colours got lost",
            "lessons": ["L1"]}  # fmt: skip
    return "```json\n" + json.dumps([item]) + "\n```"


def enhance(body: dict) -> str:
    system = body["messages"][0]["content"]
    return "a red red cat" if MAGIC in system else "a plain cat"


def by_prompt(q: str, made_from: str | None) -> str:
    return "yes" if q == CAT or "red red" in (made_from or "") else "no"


@pytest.fixture
def sets(tmp_path: Path) -> tuple[Path, Path]:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text(json.dumps({"prompt": "a red cat in a box", "category": "colour"}) + "\n")
    test.write_text("\n".join(json.dumps({"prompt": p, "category": c}) for p, c in (
        ("a red cat on a sofa", "colour"), ("a red cat in the garden", "colour"), ("a cat on a red mat", "scene"),
    )) + "\n")  # fmt: skip
    return train, test


@pytest.fixture
def user_library(tmp_path: Path) -> Path:
    folder = tmp_path / "my-skills"
    (folder / "plain-style").mkdir(parents=True)
    (folder / "plain-style" / "SKILL.md").write_text(USER_SKILL)
    return folder


def _tree_hash(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def _settings(s, user_library: Path):
    return s.settings(
        skills={"paths": [str(user_library)], "bundled": False, "top_k": 20, "tool_calling": "text"},
        loop={"max_rounds": 1},
    )


def test_an_accepted_skill_goes_to_the_run_folder_and_nowhere_else(stubs, sets, user_library, tmp_path):
    s = stubs(criteria=[CAT, RED], route="red-emphasis", enhance=enhance, verdict_by_image=by_prompt,
              propose=lambda n, body: proposal_json(f"{MAGIC}: 'a red red cat'."))  # fmt: skip
    before = _tree_hash(user_library)
    out = tmp_path / "evo"
    summary = evolve(*sets, _settings(s, user_library), out, EvolveOptions(margin=1.0), progress=False)

    (entry,) = summary["proposals"]
    assert entry["decision"] == "accepted" and entry["label"] == "create red-emphasis"
    assert entry["before"]["score"] == pytest.approx(50.0) and entry["after"]["score"] == pytest.approx(100.0)
    assert entry["before"]["by_category"] == {"colour": 50.0, "scene": 50.0}
    assert entry["after"]["by_category"] == {"colour": 100.0, "scene": 100.0}
    assert "self-check" in entry["after"]["metric"]
    assert sorted(p.name for p in (out / "library").iterdir()) == ["plain-style", "red-emphasis"]
    assert load_registry((out / "library",), include_bundled=False).get("red-emphasis") is not None
    assert _tree_hash(user_library) == before  # the user's library is untouched without apply
    # The proposer saw the library and the training run's lesson.
    asked = user_text(s.script.bodies["propose"][0])
    assert "### plain-style" in asked and 'L1: Request: "a red cat in a box"' in asked
    log = [json.loads(line) for line in (out / "evolution.jsonl").read_text().splitlines()]
    assert [e["decision"] for e in log] == ["accepted"] and log[0]["lesson_texts"][0].startswith("L1: Request:")
    report = (out / "report.md").read_text()
    assert "| c1-r1-p1 | create red-emphasis | **accepted** | 50.00 | 100.00 | +50.00 |" in report
    assert "+name: red-emphasis" in report and "| colour | 50.00 | 100.00 | +50.00 |" in report
    assert "cost: mllm_calls" in report and "generator_calls 3" in report
    html = (out / "report.html").read_text()
    assert '<span class="add">+name: red-emphasis</span>' in html and 'class="accepted"' in html

    dest = tmp_path / "applied"
    done = apply_library(out, dest)
    assert (
        done["written"] == ["red-emphasis"]
        and (dest / "red-emphasis" / "SKILL.md").read_text()
        == (out / "library" / "red-emphasis" / "SKILL.md").read_text()
    )


def test_a_rejected_change_is_kept_aside_and_never_tried_again_unchanged(stubs, sets, user_library, tmp_path):
    s = stubs(criteria=[CAT, RED], route="red-emphasis", enhance=enhance, verdict_by_image=by_prompt,
              propose=lambda n, body: proposal_json("Mention the colour."))  # fmt: skip
    settings = _settings(s, user_library)
    out = tmp_path / "evo"
    first = evolve(*sets, settings, out, progress=False)
    (entry,) = first["proposals"]
    assert entry["decision"] == "rejected" and entry["after"]["score"] == pytest.approx(50.0)
    assert "needs at least +1" in entry["reason"]
    rejected = out / "rejected" / "c1-r1-p1"
    assert "Mention the colour." in (rejected / "SKILL.md").read_text()
    assert json.loads((rejected / "result.json").read_text())["decision"] == "rejected"
    assert not (out / "library" / "red-emphasis").exists()

    images = len(s.gen.prompts)
    second = evolve(*sets, settings, out, progress=False)  # the next cycle; the proposer repeats itself
    (again,) = second["proposals"]
    assert again["decision"] == "repeat" and "rejected in cycle 1 (c1-r1-p1)" in again["reason"]
    assert len(s.gen.prompts) == images  # nothing re-run: same library, same runs
    asked = user_text(s.script.bodies["propose"][1])
    assert "Changes turned down before" in asked and "create red-emphasis: colours got lost" in asked
    assert [e["cycle"] for e in map(json.loads, (out / "evolution.jsonl").read_text().splitlines())] == [1, 2]


def test_invalid_proposals_are_refused_by_the_registrys_rules(stubs, sets, user_library, tmp_path):
    bad = skill_md(MAGIC).replace("metadata:\n  examples:\n    - a red cat\n", "")
    answer = json.dumps([
        {"op": "create", "skill_md": bad, "rationale": "no examples"},
        {"op": "revise", "targets": ["nope"], "skill_md": skill_md("x", "nope")},
        {"op": "delete", "targets": ["plain-style"], "rationale": "unused"},
    ])  # fmt: skip
    s = stubs(criteria=[CAT, RED], verdict_by_image=by_prompt, propose=lambda n, body: answer)
    summary = evolve(*sets, _settings(s, user_library), tmp_path / "evo", progress=False)
    decisions = [(e["decision"], e["reason"]) for e in summary["proposals"]]
    assert decisions[0] == (
        "invalid",
        "red-emphasis/SKILL.md: metadata.examples must list at least one example request",
    )
    assert decisions[1] == ("invalid", "revise: no skill named nope in the library")
    assert decisions[2][0] == "rejected"  # deleting an unused skill changes no score: not worth it


def test_proposal_checks():
    library = load_registry((), include_bundled=True)
    with pytest.raises(ProposalError, match="must keep its name"):
        validate(Proposal("revise", ["counting"], skill_md(MAGIC, "other")), library)
    with pytest.raises(ProposalError, match=r"a skill named counting already exists; revise it instead"):
        validate(Proposal("create", [], skill_md(MAGIC, "counting")), library)
    with pytest.raises(ProposalError, match="merge names 2 distinct"):
        validate(Proposal("merge", ["counting"], skill_md(MAGIC, "both")), library)
    merged = validate(Proposal("merge", ["counting", "negation"], skill_md(MAGIC, "counting")), library)
    assert merged is not None and merged.name == "counting"
    with pytest.raises(ProposalError, match="name must be"):
        check_skill_md(skill_md(MAGIC).replace("name: red-emphasis", "name: Red Emphasis"), "red-emphasis")
    with pytest.raises(ProposalError, match="no JSON list"):
        parse_proposals("I would add a skill.")
    assert parse_proposals('{"proposals": [{"op": "DELETE", "targets": ["x"]}]}')[0].op == "delete"
    same = Proposal("create", [], skill_md(MAGIC) + "\n\n")
    assert same.digest() == Proposal("create", [], skill_md(MAGIC)).digest()


def test_decide_needs_the_margin_and_no_category_drop():
    before = {"score": 60.0, "by_category": {"count": 70.0, "colour": 50.0}, "errors": []}
    better = {"score": 62.0, "by_category": {"count": 64.0, "colour": 60.0}, "errors": []}
    assert decide(before, better, margin=1.0, max_drop=5.0) == (
        False, "category count fell 6.00 points (more than --max-drop 5)")  # fmt: skip
    assert decide(before, better, margin=1.0, max_drop=10.0)[0] is True
    assert decide(before, better, margin=3.0, max_drop=10.0)[0] is False


def test_overlapping_sets_are_refused_in_one_line(sets, tmp_path):
    train, test = sets
    test.write_text(test.read_text() + json.dumps({"prompt": "A red cat  in a box"}) + "\n")
    with pytest.raises(UsageError, match="share 1 prompt"):
        evolve(train, test, None, tmp_path / "evo", progress=False)  # type: ignore[arg-type]
    done = gems("skills", "evolve", "--train", str(train), "--test", str(test), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert error_lines(done.stderr) == [
        "gems: error: --train and --test share 1 prompt(s), e.g. 'a red cat in a box'; test prompts must be held out"
    ]
    assert not (tmp_path / "o").exists()


def test_cli_evolve_then_apply(stubs, sets, user_library, tmp_path):
    import yaml

    s = stubs(criteria=[CAT, RED], route="red-emphasis", enhance=enhance, verdict_by_image=by_prompt,
              propose=lambda n, body: proposal_json(f"{MAGIC}."))  # fmt: skip
    config = _settings(s, user_library).model_dump(mode="json")
    config["mllm"]["api_key"] = None
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "evo"
    done = gems("skills", "evolve", "--train", str(sets[0]), "--test", str(sets[1]), "--config",
                str(tmp_path / "c.yaml"), "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1 accepted: create red-emphasis"
    assert "c1-r1-p1 create red-emphasis: accepted" in done.stderr
    applied = gems("skills", "apply", str(out), "--to", str(user_library))
    assert applied.returncode == 0, applied.stderr
    assert "wrote 1 skill(s)" in applied.stdout and (user_library / "red-emphasis" / "SKILL.md").is_file()
    missing = gems("skills", "apply", str(tmp_path / "nothing"), "--to", str(user_library))
    assert missing.returncode == 2 and "holds no gems skills evolve run" in missing.stderr


def test_an_unreadable_answer_is_logged_and_the_cycle_ends_cleanly(stubs, sets, user_library, tmp_path):
    s = stubs(criteria=[CAT, RED], verdict_by_image=by_prompt, propose=lambda n, body: "I would add a skill.")
    out = tmp_path / "evo"
    summary = evolve(*sets, _settings(s, user_library), out, progress=False)
    assert summary["proposals"] == [] and summary["diff"] == ""
    (entry,) = [json.loads(line) for line in (out / "evolution.jsonl").read_text().splitlines()]
    assert entry["decision"] == "unreadable" and "no JSON list" in entry["reason"]
    assert "Proposer answers that could not be read" in (out / "report.md").read_text()
    page = _page_text((out / "report.html").read_text())  # the page says why its table is empty, too
    assert "the proposer's answer could not be read in 1 round(s)" in page and "no JSON list" in page


def test_a_change_undone_later_is_logged_reverted_and_blocked(tmp_path, user_library):
    from gems.interfaces.evolve.report import report_markdown
    from gems.skills.evolution import EvolutionLog, proposal_record, replaced_texts, undone

    library = tmp_path / "lib"
    shutil.copytree(user_library, library)
    original = (library / "plain-style" / "SKILL.md").read_text()
    change = Proposal("revise", ["plain-style"], USER_SKILL.replace("Describe the object", "Describe it twice"))
    entry = {"id": "c1-r1-p1", **proposal_record(change), "decision": "accepted",
             "replaced": replaced_texts(library, change)}  # fmt: skip
    assert entry["replaced"] == {"plain-style": original}
    (library / "plain-style" / "SKILL.md").write_text(change.skill_md)
    assert undone([entry], library) == []  # still in force
    (library / "plain-style" / "SKILL.md").write_text(original)  # a later change put the old text back
    assert undone([entry], library) == [entry]
    log = EvolutionLog(tmp_path / "evolution.jsonl")
    log.append(entry)
    log.append({"decision": "reverted", "digest": entry["digest"], "reverted_id": "c1-r1-p1",
                "label": entry["label"], "reason": "undone by c1-r2-p1"})  # fmt: skip
    assert change.digest() in log.blocked() and undone(log.entries(), library) == []
    assert "- c1-r1-p1 revise plain-style: undone by c1-r2-p1" in report_markdown(log.entries())


def _page_text(html: str) -> str:
    """What a reader of the HTML page sees: tags dropped, entities decoded, spaces collapsed."""
    import html as html_lib
    import re

    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_the_html_report_shows_the_reasons_and_scores_the_markdown_shows():
    from gems.interfaces.evolve.report import report_html, report_markdown

    unreadable = {"cycle": 1, "round": 1, "decision": "unreadable", "reason": "no JSON list in the proposer's answer"}
    for entries, why in (
        ([unreadable], "No proposal was tried: the proposer's answer could not be read in 1 round(s)"),
        ([], "No proposal was tried: the proposer suggested no change"),
    ):
        markdown, page = report_markdown(entries), _page_text(report_html(entries))
        assert why in markdown and why in page
        assert "| id |" not in markdown and "<table>" not in report_html(entries)  # no empty table
    page = _page_text(report_html([unreadable]))
    assert "Proposer answers that could not be read" in page and "cycle 1 round 1: no JSON list in the" in page

    accepted = {"id": "c1-r1-p1", "label": "create red-emphasis", "decision": "accepted", "reason": "+50.00 >= +1",
                "before": {"score": 50.0, "by_category": {"colour": 50.0}},
                "after": {"score": 100.0, "by_category": {"colour": 100.0}}}  # fmt: skip
    rejected = {"id": "c1-r1-p2", "label": "delete plain-style", "decision": "rejected", "op": "delete",
                "reason": "needs at least +1 (got +0.00)", "before": {"score": 100.0},
                "after": {"score": 100.0}}  # fmt: skip
    reverted = {"decision": "reverted", "reverted_id": "c1-r1-p1", "label": "create red-emphasis",
                "reason": "undone by c2-r1-p1"}  # fmt: skip
    entries = [accepted, rejected, reverted]
    markdown, page = report_markdown(entries), _page_text(report_html(entries))
    for row in (
        "c1-r1-p1 create red-emphasis accepted 50.00 100.00 +50.00 +50.00 >= +1",
        "c1-r1-p2 delete plain-style rejected 100.00 100.00 +0.00 needs at least +1 (got +0.00)",
    ):
        assert row in page  # the table row, the reason beside the scores
        assert row in " ".join(markdown.replace("*", "").replace("|", " ").split())
    for line in ("decision: rejected: needs at least +1 (got +0.00)", "colour 50.00 100.00 +50.00",
                 "c1-r1-p1 create red-emphasis: undone by c2-r1-p1"):  # fmt: skip
        assert line in page and line in " ".join(markdown.replace("|", " ").replace("- ", "").split())


def _md_cells(line: str) -> list[str]:
    """A Markdown table row's cells as GitHub splits them: at every `|` not escaped by a backslash."""
    import re

    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _md_page_text(markdown: str) -> str | None:
    """What a reader of the Markdown sees (rendered as GitHub-flavoured tables), or None without markdown-it."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return None
    return _page_text(MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown))


def test_the_markdown_report_escapes_what_the_prompt_file_and_the_proposer_wrote():
    """A `|` in a category ends no cell and `<b>x</b>`, `<lost>` are text, in report.md as in report.html."""
    from gems.interfaces.evolve.report import report_html, report_markdown

    diff = "--- a/plain-style/SKILL.md\n+++ b/plain-style/SKILL.md\n@@ -1 +1,3 @@\n+```\n+x\n+```\n"
    entry = {"id": "c1-r1-p1", "op": "revise", "label": "revise plain-style", "decision": "rejected",
             "reason": "category colour | pipe fell 9.00 points; <b>x</b> got <lost>", "rationale": "keep *it* <lost>",
             "lesson_texts": ["L1: a `cat` & &amp; [link](x)"],
             "before": {"score": 60.0, "by_category": {"colour | pipe": 50.0, "<b>x</b>": 70.0}},
             "after": {"score": 62.0, "by_category": {"colour | pipe": 41.0, "<b>x</b>": 83.0}},
             "diff": diff}  # fmt: skip
    markdown, page = report_markdown([entry]), _page_text(report_html([entry]))
    rendered = _md_page_text(markdown)
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert [len(_md_cells(row)) for row in rows] == [7, 7, 4, 4, 4]  # header and row; category header and rows
    assert _md_cells(rows[1])[-1] == r"category colour \| pipe fell 9.00 points; \<b>x\</b> got \<lost>"
    assert _md_cells(rows[3])[0] == r"\<b>x\</b>" and _md_cells(rows[4])[0] == r"colour \| pipe"
    assert "```\n+x\n+```\n````" in markdown  # the diff's own fence closes nothing
    for seen in ("colour | pipe 50.00 41.00 -9.00", "<b>x</b> 70.00 83.00 +13.00", "rationale: keep *it* <lost>",
                 "from lesson L1: a `cat` & &amp; [link](x)", "got <lost>", "+```"):  # fmt: skip
        assert seen in page
        assert rendered is None or seen in rendered  # report.md reads as report.html


def test_an_invalid_name_is_shown_as_written_with_the_rule_it_breaks():
    from gems.interfaces.evolve.report import report_html, report_markdown
    from gems.skills.evolution import proposal_record

    entries = []
    for n, (op, targets, name) in enumerate([("create", [], "Colour_Fix"), ("merge", ["a", "b"], '"Both Of Them"')]):
        proposal = Proposal(op, targets, skill_md(MAGIC, name))
        with pytest.raises(ProposalError) as refused:
            check_skill_md(proposal.skill_md)
        entries.append({"id": f"c1-r1-p{n + 1}", **proposal_record(proposal), "decision": "invalid",
                        "reason": str(refused.value)})  # fmt: skip
    no_line = Proposal("create", [], skill_md(MAGIC).replace("name: red-emphasis\n", ""))
    entries.append({"id": "c1-r1-p3", **proposal_record(no_line), "decision": "invalid",
                    "reason": "the SKILL.md has no valid name: line in its front matter"})  # fmt: skip
    assert [e["label"] for e in entries] == ["create None", "merge a + b -> None", "create None"]  # the log's
    rule = ("a skill name is 1-64 lowercase letters, digits and hyphens, with no hyphen first, last or twice in a row "
            "(e.g. red-emphasis)")  # fmt: skip
    rows = [
        "c1-r1-p1 create \"Colour_Fix\" invalid - - - the name 'Colour_Fix' is not a valid skill name: it has "
        f"uppercase letters (C F), '_'; {rule}",
        "c1-r1-p2 merge a + b -> \"Both Of Them\" invalid - - - the name 'Both Of Them' is not a valid skill name: it "
        f"has uppercase letters (B O T), spaces; {rule}",
        f"c1-r1-p3 create (no name: line) invalid - - - the SKILL.md has no name: line in its front matter; {rule}",
    ]
    markdown, page = report_markdown(entries), _page_text(report_html(entries))
    rendered = _md_page_text(markdown)
    for row in rows:
        assert row in page
        assert rendered is None or row in rendered
    assert "None" not in page and "None" not in markdown
