"""Agent Skill: the SKILL.md registry, retrieval, skills as tool nodes, the text fallback, OCR and `gems skills`."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image, ImageDraw, ImageFont

from gems.configs import EmbeddingSettings
from gems.graph import build_graph, run_config
from gems.interfaces.cli import main as gems_main
from gems.memory.embeddings import get_embeddings
from gems.skills import SkillRegistry, bundled_library, load_registry
from gems.skills.retrieval import SkillIndex, get_index
from gems.skills.verifiers import combine, compare, ocr_check, quoted_texts
from tests.conftest import make_settings
from tests.support.servers import HTTPFailure, OpenAIStub, ScriptedMLLM

CRITERIA = ["Is there a cat?", "Is the cat red?"]
BUNDLED = {
    "creative-drawing", "aesthetic-drawing", "spatial-layout", "text-rendering",
    "counting", "photorealism", "negation", "cjk-text-rendering", "product-shot",
}  # fmt: skip

# Sample prompts and the skill each should trigger (bench/routing_samples.json). Retrieval must rank that skill
# among the planner's top candidates; whether a live model then picks it is `python bench/skill_routing.py --live`.
ROUTING_TABLE = [
    (item["prompt"], item["skill"])
    for item in json.loads((Path(__file__).parents[1] / "bench" / "routing_samples.json").read_text())["samples"]
    if item["skill"]
]


def write_skill(root: Path, name: str, text: str | None = None, folder: str | None = None) -> Path:
    path = root / (folder or name) / "SKILL.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        text
        if text is not None
        else f"---\nname: {name}\ndescription: Use for {name} requests. Do not use otherwise.\n---\n"
        f"# {name}\n\nDo it.\n"
    )
    return path


# --- format and registry ------------------------------------------------------------------------------


def test_bundled_library_loads_cleanly():
    registry = load_registry()
    assert set(registry.names()) == BUNDLED and registry.errors == []
    for skill in registry.skills.values():
        assert skill.folder.name == skill.name and skill.folder.parent == bundled_library()
        assert "Do not use" in skill.description and len(skill.description) <= 1024
        assert skill.metadata.get("examples"), f"{skill.name} needs trigger examples for retrieval"
    assert load_registry().get("text-rendering").metadata["verifiers"] == ["ocr"]


@pytest.mark.parametrize(
    ("text", "folder", "message"),
    [
        ("# no front matter\n", "a-skill", "missing YAML front matter"),
        ("---\nname: a-skill\ndescription: x\n", "a-skill", "not closed"),
        ("---\nname: [a\n---\nbody\n", "a-skill", "front matter is not valid YAML"),
        ("---\nname: other\ndescription: x\n---\nbody\n", "a-skill", "must equal its folder name 'a-skill'"),
        ("---\nname: Bad_Name\ndescription: x\n---\nbody\n", "Bad_Name", "lowercase letters, digits and hyphens"),
        ("---\nname: a-skill\ndescription: '  '\n---\nbody\n", "a-skill", "description is empty"),
        ("---\nname: a-skill\ndescription: x\ncolour: red\n---\nbody\n", "a-skill", "unknown front matter keys"),
        ("---\nname: a-skill\ndescription: x\n---\n\n", "a-skill", "instructions"),
    ],
)
def test_bad_skill_files_are_named_and_skipped(tmp_path, text, folder, message):
    write_skill(tmp_path, "good-one")
    bad = write_skill(tmp_path, folder, text=text, folder=folder)
    registry = SkillRegistry()
    registry.add_folder(tmp_path)
    assert registry.names() == ["good-one"]  # one bad skill does not take the others down
    assert len(registry.errors) == 1 and str(bad) in registry.errors[0] and message in registry.errors[0]


def test_duplicate_names_and_user_paths(tmp_path):
    write_skill(tmp_path / "a", "brand-style")
    write_skill(tmp_path / "b", "brand-style")
    write_skill(tmp_path / "b", "counting")  # clashes with the bundled skill
    registry = load_registry((tmp_path / "a", tmp_path / "b"))
    assert "brand-style" in registry.names() and len(registry) == len(BUNDLED) + 1
    assert registry.get("brand-style").path == tmp_path / "a" / "brand-style" / "SKILL.md"
    assert registry.get("counting").folder.parent == bundled_library()
    assert sum("duplicate skill name" in e for e in registry.errors) == 2


# --- retrieval ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embeddings():
    return get_embeddings(EmbeddingSettings())


def test_routing_table_expected_skill_is_a_top_candidate(embeddings):
    index = get_index(load_registry(), embeddings)
    misses = []
    for prompt, expected in ROUTING_TABLE:
        names = [skill.name for skill, _ in index.search(prompt, k=2)]
        if expected not in names:
            misses.append((prompt, expected, names))
    assert not misses
    top1 = sum(index.search(p, k=1)[0][0].name == e for p, e in ROUTING_TABLE)
    assert top1 >= 15  # measured 15/18 with all-MiniLM-L6-v2


def test_router_prompt_size_does_not_grow_with_the_library(tmp_path, embeddings):
    many = tmp_path / "many"
    topics = ["watercolour", "origami", "isometric", "pixel art", "blueprint", "mosaic", "embroidery", "neon"]
    for i in range(1000):
        topic = topics[i % len(topics)]
        write_skill(many, f"style-{i:04d}",
                    text=f"---\nname: style-{i:04d}\ndescription: Renders scenes as {topic} variant {i}. Use for "
                    f"{topic} requests. Do not use otherwise.\n---\nBody {i}.\n")  # fmt: skip
    big = SkillRegistry()
    big.add_folder(many)
    started = time.perf_counter()
    index = SkillIndex(big, embeddings)
    built = time.perf_counter() - started
    hits = index.search("an origami crane on a desk", k=4)
    assert len(hits) == 4 and all("origami" in s.description for s, _ in hits)
    small_manifest = load_registry().manifest([s for s in load_registry().names()[:4]])
    big_manifest = big.manifest([s.name for s, _ in hits])
    assert len(big_manifest) < 2 * len(small_manifest) and len(big.manifest()) > 50 * len(big_manifest)
    assert built < 120


# --- skills as tool nodes ------------------------------------------------------------------------------


def run(settings, prompt="a red cat on a mat", thread="t"):
    graph = build_graph(checkpointer=InMemorySaver())
    graph.invoke({"prompt": prompt}, run_config(settings, thread), context=settings)
    return graph.get_state(run_config(settings, thread)).values


def test_planner_loads_a_skill_only_through_the_tool_node(stubs):
    s = stubs(criteria=CRITERIA, route="counting", enhance="exactly 1 (one) red cat on a mat")
    values = run(s.settings())
    trace = values["skill_trace"]
    assert trace["mode"] == "auto" and len(trace["offered"]) == 4
    assert trace["chosen"] == ["counting"] and trace["loaded"] == ["counting"] and values["skill"] == "counting"
    assert s.gen.prompts[0] == "exactly 1 (one) red cat on a mat"
    first = s.script.bodies["route"][0]
    assert {t["function"]["name"] for t in first["tools"]} == {"load_skill", "read_skill_resource"}
    assert "# Counting" not in str(first)  # descriptions only until the tool runs


def test_none_means_the_original_prompt(stubs):
    s = stubs(criteria=CRITERIA, route="NONE")
    values = run(s.settings())
    assert values["skill"] is None and values["skill_trace"]["loaded"] == []
    assert s.gen.prompts[0] == "a red cat on a mat" and s.script.calls["enhance"] == 0


def tool_call(tool: str, **args):
    return {"content": None, "tool_calls": [(tool, args)]}


def test_load_skill_refuses_non_candidates_and_respects_max_active(stubs, mllm_server, isolated_env):
    def planner(turn, messages):
        return {
            1: tool_call("load_skill", name="no-such-skill"),
            2: tool_call("load_skill", name="counting"),
            3: tool_call("load_skill", name="spatial-layout"),
        }.get(turn, "one red cat sitting on one mat")

    s = stubs(criteria=CRITERIA, planner=planner)
    settings = s.settings(skills={"top_k": 20})
    values = run(settings)
    tool_replies = [m for m in s.script.bodies["planner"][3]["messages"] if m["role"] == "tool"]
    assert "'no-such-skill' is not one of the candidate skills" in tool_replies[0]["content"]
    assert "only 1 skill(s) may be active" in tool_replies[2]["content"]
    assert values["skill_trace"]["chosen"] == ["no-such-skill", "counting", "spatial-layout"]
    assert values["skill_trace"]["loaded"] == ["counting"]
    assert s.gen.prompts[0] == "one red cat sitting on one mat"

    mllm2, _ = mllm_server(criteria=CRITERIA, planner=planner)
    settings2 = make_settings(mllm2, s.gen, isolated_env, skills={"top_k": 20, "max_active": 2})
    assert run(settings2, thread="t2")["skill_trace"]["loaded"] == ["counting", "spatial-layout"]


def test_read_skill_resource_after_loading(stubs, tmp_path):
    skill_md = write_skill(tmp_path / "user", "brand-style")
    (skill_md.parent / "references").mkdir()
    (skill_md.parent / "references" / "palette.md").write_text("Brand palette: teal #008080 and sand #C2B280.")

    def planner(turn, messages):
        return {
            1: tool_call("read_skill_resource", name="brand-style", path="references/palette.md"),
            2: tool_call("load_skill", name="brand-style"),
            3: tool_call("read_skill_resource", name="brand-style", path="../../etc/passwd"),
            4: tool_call("read_skill_resource", name="brand-style", path="references/palette.md"),
        }.get(turn, "a teal and sand cat on a mat")

    s = stubs(criteria=CRITERIA, planner=planner)
    settings = s.settings(skills={"top_k": 20, "paths": [str(tmp_path / "user")]})
    values = run(settings)
    replies = [m["content"] for m in s.script.bodies["planner"][4]["messages"] if m["role"] == "tool"]
    assert "load the skill 'brand-style' with load_skill before" in replies[0]
    assert "references/palette.md" in replies[1]  # load_skill lists the resources
    assert "is not a resource of 'brand-style'" in replies[2]
    assert replies[3] == "Brand palette: teal #008080 and sand #C2B280."
    assert values["skill_trace"]["resources"] == ["brand-style/references/palette.md"]
    assert values["skill"] == "brand-style"


def test_text_mode_uses_the_papers_two_calls(stubs):
    s = stubs(criteria=CRITERIA, route="spatial-layout", enhance="a red cat centred on a mat")
    values = run(s.settings(skills={"tool_calling": "text"}))
    assert values["skill_trace"]["mode"] == "text" and values["skill_trace"]["loaded"] == ["spatial-layout"]
    assert "tools" not in s.script.bodies["route"][0]
    assert "# Spatial layout" in s.script.bodies["enhance"][0]["messages"][0]["content"]
    assert s.gen.prompts[0] == "a red cat centred on a mat"


def test_auto_falls_back_to_text_when_the_endpoint_refuses_tools(gen_server, isolated_env):
    scripted = ScriptedMLLM(criteria=CRITERIA, route="counting", enhance="exactly one red cat")

    def chat(body):
        if "tools" in body:
            raise HTTPFailure(400, '"auto" tool choice requires --enable-auto-tool-choice')
        return scripted(body)

    server = OpenAIStub(chat=chat).start()
    try:
        gen = gen_server()
        values = run(make_settings(server, gen, isolated_env))
    finally:
        server.stop()
    assert values["skill_trace"]["mode"] == "text (tools refused: HTTP 400)"
    assert values["skill"] == "counting" and gen.prompts[0] == "exactly one red cat"


def test_skills_disabled_skips_planning_calls(stubs):
    s = stubs(criteria=CRITERIA, route="counting")
    values = run(s.settings(skills={"enabled": False}))
    assert values["skill_trace"]["mode"] == "off" and values["skill_trace"]["offered"] == []
    assert s.script.calls["route"] == 0 and s.gen.prompts[0] == "a red cat on a mat"


def test_skill_reaches_the_refiner_only_when_asked(stubs, mllm_server, isolated_env):
    verdict = lambda q, n: "yes" if n >= 2 else "no"  # noqa: E731
    s = stubs(criteria=CRITERIA, route="counting", verdict=verdict)
    run(s.settings())
    assert "# Counting" not in s.script.bodies["refine"][0]["messages"][0]["content"]
    mllm2, script2 = mllm_server(criteria=CRITERIA, route="counting", verdict=verdict)
    run(make_settings(mllm2, s.gen, isolated_env, skills={"to_refiner": True}), thread="t2")
    assert "# Counting" in script2.bodies["refine"][0]["messages"][0]["content"]


# --- skills that bring tools: OCR ----------------------------------------------------------------------


def render_text(text: str, size=(480, 160)) -> bytes:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((20, 40), text, fill="black", font=ImageFont.load_default(size=64))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_quoted_text_and_comparison_rules():
    assert quoted_texts('Does the sign say "OPEN LATE"?') == ["OPEN LATE"]
    assert quoted_texts("Is the cat's sign saying 'Hi there'?") == ["Hi there"]
    assert quoted_texts("Does the plaque read 「金閣寺」?") == ["金閣寺"]
    assert quoted_texts("Is there a cat?") == []
    assert compare("OPEN LATE", "open  late!") == ("match", 1.0)
    assert compare("HELLO FOX", "HELO FOX")[0] == "mismatch"
    assert compare("HELLO FOX", "")[0] == "unreadable"
    mismatch = {"status": "mismatch"}
    assert combine(True, mismatch) is False and combine(True, {"status": "match"}) is True
    assert combine(False, {"status": "match"}) is False and combine(True, {"status": "unreadable"}) is True


def test_ocr_passes_the_right_words_and_fails_a_misspelling(tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    right, wrong = tmp_path / "right.png", tmp_path / "wrong.png"
    right.write_bytes(render_text("HELLO FOX"))
    wrong.write_bytes(render_text("HELO FOX"))
    criterion = 'Does the sign say "HELLO FOX"?'
    good = ocr_check(criterion, right)
    bad = ocr_check(criterion, wrong)
    assert good["status"] == "match" and good["reading"] == "HELLO FOX"
    assert bad["status"] == "mismatch" and bad["reading"] == "HELO FOX" and bad["similarity"] > 0.9
    assert ocr_check("Is there a fox?", right) is None


def test_text_rendering_skill_brings_ocr_into_the_critique(stubs):
    pytest.importorskip("rapidocr_onnxruntime")
    criteria = ['Does the sign say "HELLO FOX"?', "Is there a sign?"]
    # A lenient verifier says yes to everything; OCR catches the misspelling of round 1.
    s = stubs(
        criteria=criteria,
        route="text-rendering",
        enhance='a sign reading "HELLO FOX"',
        gen=dict(render=lambda prompt, call: render_text("HELO FOX" if call == 1 else "HELLO FOX")),
    )
    values = run(s.settings(), prompt='a sign that says "HELLO FOX"')
    assert values["verifiers"] == ["ocr"]
    first, second = values["rounds"]
    text_verdict = first["verdicts"][0]
    assert text_verdict["mllm_passed"] is True and text_verdict["passed"] is False
    assert text_verdict["checks"][0]["status"] == "mismatch" and text_verdict["checks"][0]["reading"] == "HELO FOX"
    assert "checks" not in first["verdicts"][1]  # no quoted text, no OCR
    assert first["failed"] == ['Does the sign say "HELLO FOX"?']
    assert second["failed"] == [] and second["verdicts"][0]["checks"][0]["status"] == "match"
    assert values["success"] is True


# --- gems skills CLI -----------------------------------------------------------------------------------


def test_skills_cli(capsys, tmp_path):
    assert gems_main(["skills", "list"]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == len(BUNDLED) and "9 skill(s); 0 could not be loaded" in out.err
    assert gems_main(["skills", "show", "negation"]) == 0
    assert "# Negation and absence" in capsys.readouterr().out
    assert gems_main(["skills", "show", "nope"]) == 2
    assert gems_main(["skills", "validate"]) == 0
    assert gems_main(["skills", "new", "brand-look", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert gems_main(["skills", "validate", str(tmp_path / "brand-look")]) == 0
    assert "ok     brand-look" in capsys.readouterr().out
    assert gems_main(["skills", "new", "brand-look", "--dir", str(tmp_path)]) == 2
    assert gems_main(["skills", "new", "Bad Name", "--dir", str(tmp_path)]) == 2
    write_skill(tmp_path, "broken", text="---\nname: wrong\ndescription: x\n---\nbody\n")
    assert gems_main(["skills", "validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "ok     brand-look" in out and "error" in out and "must equal its folder name 'broken'" in out


def test_the_registry_rereads_a_folder_whose_skills_changed(tmp_path):
    from gems.skills import load_registry

    folder = tmp_path / "lib" / "tidy"
    folder.mkdir(parents=True)
    text = "---\nname: tidy\ndescription: {d}\n---\n# Tidy\n\nKeep it tidy.\n"
    (folder / "SKILL.md").write_text(text.format(d="First words."))
    assert load_registry((tmp_path / "lib",), include_bundled=False).get("tidy").description == "First words."
    (folder / "SKILL.md").write_text(text.format(d="Second, longer words."))
    assert load_registry((tmp_path / "lib",), include_bundled=False).get("tidy").description == "Second, longer words."
    (tmp_path / "lib" / "tidy" / "SKILL.md").unlink()
    assert len(load_registry((tmp_path / "lib",), include_bundled=False)) == 0
