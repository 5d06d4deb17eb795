"""Edit-based refinement (loop.refine_mode edit | auto): the loop, the edit backends, tiny edit pipelines."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image

from gems.configs import ConfigError, GemsSettings, load_settings
from gems.graph import build_graph, run_config
from gems.memory.trajectory import run_result
from gems.nodes.generators import GeneratorError, editor_settings, get_editor
from gems.nodes.generators.edit import DiffusersEditor
from tests.support.aio import one_image
from tests.support.servers import OpenAIStub, edited_png, png_bytes

CAT, RED, MAT = "Is there a cat?", "Is the cat red?", "Is the cat on a mat?"
CRITERIA = [CAT, RED, MAT]


@pytest.fixture
def edit_server():
    """An OpenAI-compatible `/v1/images/edits` on 127.0.0.1 that recolours the image and records each request."""
    server = OpenAIStub(edits=edited_png).start()
    yield server
    server.stop()


def by_image(table: dict[str | None, set[str]]):
    """Verdicts decided by what the image was made from (the stubs write it into the PNG)."""
    return lambda q, made_from: "yes" if q in table.get(made_from, set()) else "no"


def edit_settings(s, edit_server, **loop):
    return s.settings(
        loop={"refine_mode": "edit", **loop},
        editor={"backend": "openai", "url": edit_server.base_url, "model": "stub-edit", "max_retries": 0},
    )


def run(settings, prompt="a red cat on a mat"):
    graph = build_graph(checkpointer=InMemorySaver())
    config = run_config(settings, "t1")
    graph.invoke({"prompt": prompt}, config, context=settings, durability="sync")
    return graph.get_state(config).values


def test_edit_round_keeps_what_passed_and_fixes_what_failed(stubs, edit_server):
    table = {"a red cat on a mat": {CAT, MAT}, "edit instruction 1": {CAT, RED, MAT}}
    s = stubs(criteria=CRITERIA, verdict_by_image=by_image(table))
    values = run(edit_settings(s, edit_server))

    assert values["success"] is True and values["final"]["round"] == 2
    assert s.gen.prompts == ["a red cat on a mat"]  # round 2 was not redrawn
    edits = [r for r in edit_server.requests if r["path"] == "/v1/images/edits"]
    assert len(edits) == 1
    body = edits[0]["body"]
    assert body["prompt"] == "edit instruction 1" and body["model"] == "stub-edit" and body["n"] == "1"
    assert Image.open(io.BytesIO(body["image"])).text["prompt"] == "a red cat on a mat"  # round 1's image went in
    assert s.script.calls["edit"] == 1 and s.script.calls["refine"] == 0
    second = values["rounds"][1]
    assert second["mode"] == "edit" and second["base_round"] == 1 and second["instruction"] == "edit instruction 1"
    assert second["base_image"]["sha256"] == values["rounds"][0]["image"]["sha256"]
    assert (second["kept"], second["fixed"], second["broken"]) == ([CAT, MAT], [RED], [])
    assert second["image"]["edit"] is True and values["rounds"][0]["mode"] == "generate"
    # The editor saw the image to edit and what it passed and failed.
    asked = s.script.bodies["edit"][0]
    texts = "\n".join(p.get("text", "") for p in asked["messages"][1]["content"])
    assert "The image to edit (attempt 1)" in texts and f"It passes:\n- {CAT}" in texts and RED in texts
    public = run_result(values)
    assert public["rounds"][1]["fixed"] == [RED] and public["rounds"][1]["mode"] == "edit"


def test_an_edit_that_breaks_what_passed_loses_to_the_earlier_image(stubs, edit_server):
    # Round 1 passes cat and mat; the edit keeps the cat, breaks the mat and does not fix the colour.
    table = {"a red cat on a mat": {CAT, MAT}, "edit instruction 1": {CAT}, "edit instruction 2": {CAT, MAT}}
    s = stubs(criteria=CRITERIA, verdict_by_image=by_image(table))
    values = run(edit_settings(s, edit_server, max_rounds=3))

    assert values["success"] is False
    assert values["final"]["round"] == 1 and values["final"]["image"] == values["rounds"][0]["image"]
    second, third = values["rounds"][1], values["rounds"][2]
    assert (second["kept"], second["fixed"], second["broken"]) == ([CAT], [], [MAT])
    # edit_base best: the next edit starts again from round 1's image, not from the broken edit.
    assert third["base_round"] == 1 and third["base_image"] == values["rounds"][0]["image"]
    assert (third["kept"], third["fixed"], third["broken"]) == ([CAT, MAT], [], [])
    # Every round re-verified every criterion.
    assert len(values["verdicts"]) == 9


def test_edit_base_last_edits_the_latest_image(stubs, edit_server):
    table = {"a red cat on a mat": {CAT, MAT}, "edit instruction 1": {CAT}}
    s = stubs(criteria=CRITERIA, verdict_by_image=by_image(table))
    values = run(edit_settings(s, edit_server, max_rounds=3, edit_base="last"))
    assert values["rounds"][2]["base_round"] == 2
    assert values["rounds"][2]["base_image"] == values["rounds"][1]["image"]


def test_auto_mode_chooses_per_round_and_records_why(stubs, edit_server):
    answers = {
        1: "ACTION: regenerate\nREASON: the mat is missing from the scene\nTEXT: a red cat sitting on a woven mat",
        2: "ACTION: edit\nREASON: only the colour is off\nTEXT: make the cat red, keep everything else",
    }
    table = {
        "a red cat on a mat": {CAT},
        "a red cat sitting on a woven mat": {CAT, MAT},
        "make the cat red, keep everything else": {CAT, RED, MAT},
    }
    s = stubs(criteria=CRITERIA, verdict_by_image=by_image(table), choose=lambda n: answers[n])
    values = run(s.settings(
        loop={"refine_mode": "auto"},
        editor={"backend": "openai", "url": edit_server.base_url, "model": "stub-edit", "max_retries": 0},
    ))  # fmt: skip

    assert values["success"] is True and [r["mode"] for r in values["rounds"]] == ["generate", "generate", "edit"]
    assert s.gen.prompts == ["a red cat on a mat", "a red cat sitting on a woven mat"]
    assert values["rounds"][1]["reason"] == "the mat is missing from the scene"
    assert values["rounds"][2]["reason"] == "only the colour is off" and values["rounds"][2]["base_round"] == 2
    # A regenerated round is compared with the round before it.
    assert (values["rounds"][1]["kept"], values["rounds"][1]["fixed"]) == ([CAT], [MAT])
    assert s.script.calls["choose"] == 2


def test_auto_mode_without_an_action_regenerates_and_warns(stubs, edit_server):
    s = stubs(criteria=CRITERIA, verdict=lambda q, n: "yes" if n > 1 else "no", choose=lambda n: "a plain prompt")
    values = run(s.settings(
        loop={"refine_mode": "auto"},
        editor={"backend": "openai", "url": edit_server.base_url, "model": "stub-edit", "max_retries": 0},
    ))  # fmt: skip
    assert s.gen.prompts == ["a red cat on a mat", "a plain prompt"]
    assert any("named no ACTION" in w for w in values["warnings"])


def test_edit_mode_without_an_editor_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text("loop: {refine_mode: edit}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "c.yaml")
    assert "loop.refine_mode edit needs an editor: set editor.backend" in str(err.value)
    assert "\n" not in str(err.value)
    # Default: the paper's loop, and no editor needed.
    assert GemsSettings().loop.refine_mode == "regenerate" and GemsSettings().editor.backend == "none"


def test_editor_generator_backend_reuses_the_generator(tmp_path):
    settings = GemsSettings.model_validate({
        "generator": {"backend": "openai", "preset": None, "url": "http://127.0.0.1:1/v1", "model": "img"},
        "editor": {"backend": "generator", "steps": 12},
        "loop": {"refine_mode": "edit"},
    })  # fmt: skip
    resolved = editor_settings(settings)
    assert (resolved.backend, resolved.url, resolved.model, resolved.steps) == (
        "openai",
        "http://127.0.0.1:1/v1",
        "img",
        12,
    )
    http = settings.model_copy(update={"generator": settings.generator.model_copy(update={"backend": "http"})})
    with pytest.raises(ConfigError, match="the http protocol has no edits"):
        editor_settings(http)


def test_edit_presets_fill_the_model_cards_settings():
    settings = GemsSettings.model_validate(
        {
            "editor": {"backend": "diffusers", "preset": "qwen-image-edit-2511", "steps": 8},
            "loop": {"refine_mode": "edit"},
        }
    )
    resolved = editor_settings(settings)
    assert resolved.model == "Qwen/Qwen-Image-Edit-2511" and resolved.steps == 8  # explicit wins
    assert resolved.call_kwargs == {"true_cfg_scale": 4.0} and resolved.negative_prompt == " "
    assert resolved.preset is None
    kontext = settings.model_copy(update={"editor": settings.editor.model_copy(update={"preset": "flux-kontext"})})
    assert editor_settings(kontext).model == "black-forest-labs/FLUX.1-Kontext-dev"
    bad = settings.model_copy(update={"editor": settings.editor.model_copy(update={"preset": "nope"})})
    with pytest.raises(ConfigError, match=r"unknown editor\.preset 'nope'"):
        editor_settings(bad)


# --- backends ---------------------------------------------------------------------------------------------------


def test_openai_editor_sends_multipart_and_reads_b64(edit_server):
    from gems.configs import GeneratorSettings

    editor = get_editor(GeneratorSettings(backend="openai", preset=None, url=edit_server.base_url, model="qwen-edit",
                                          steps=7, guidance_scale=2.5, max_retries=0, api_key="sk-e"))  # fmt: skip
    source = png_bytes((10, 20, 30), size=24, text="the original")
    out = one_image(editor.edit(source, "paint it green", [42]))
    request = edit_server.requests[-1]
    assert request["path"] == "/v1/images/edits" and request["headers"]["authorization"] == "Bearer sk-e"
    body = request["body"]
    assert body["image"] == source and body["image_type"] == "image/png"
    assert (body["prompt"], body["seed"], body["num_inference_steps"], body["guidance_scale"]) == (
        "paint it green", "42", "7", "2.5")  # fmt: skip
    assert Image.open(io.BytesIO(out.data)).text["prompt"] == "paint it green"
    assert out.meta["seed"] == 42 and out.meta["edit"] is True and out.meta["steps"] == 7


def test_edit_loop_under_ainvoke(stubs, edit_server):
    """The async path (gems bench, servers): the edit goes out on the event loop through `aedit`."""
    table = {"a red cat on a mat": {CAT, MAT}, "edit instruction 1": {CAT, RED, MAT}}
    s = stubs(criteria=CRITERIA, verdict_by_image=by_image(table))
    settings = edit_settings(s, edit_server)
    graph = build_graph(checkpointer=InMemorySaver())
    config = run_config(settings, "t-async")
    asyncio.run(graph.ainvoke({"prompt": "a red cat on a mat"}, config, context=settings))
    values = graph.get_state(config).values
    assert values["success"] is True and values["rounds"][1]["mode"] == "edit"
    assert [r["path"] for r in edit_server.requests] == ["/v1/images/edits"]


def test_openai_editor_names_the_missing_field():
    from gems.configs import GeneratorSettings

    with pytest.raises(GeneratorError, match=r"set editor\.url"):
        get_editor(GeneratorSettings(backend="openai", preset=None, model="m"))


def _png(color=(200, 10, 10), size=32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def test_flux_kontext_folder_through_the_real_backend(tmp_path):
    from gems.configs import GeneratorSettings
    from tests.support.tiny_pipelines import save_tiny_flux_kontext

    folder = save_tiny_flux_kontext(tmp_path / "kontext")
    settings = GemsSettings.model_validate({
        "editor": {"backend": "diffusers", "model": str(folder), "steps": 2, "guidance_scale": 2.5, "width": 32,
                   "height": 32, "device": "cpu", "call_kwargs": {"max_area": 1024, "_auto_resize": False}},
        "loop": {"refine_mode": "edit"},
    })  # fmt: skip
    resolved = editor_settings(settings)
    assert isinstance(resolved, GeneratorSettings)
    editor = get_editor(resolved)
    assert isinstance(editor, DiffusersEditor) and type(editor.pipe).__name__ == "FluxKontextPipeline"
    first = one_image(editor.edit(_png(), "make it blue", [7]))
    again = one_image(editor.edit(_png(), "make it blue", [7]))
    other = one_image(editor.edit(_png(), "make it blue", [8]))
    assert first.data == again.data and first.data != other.data  # seeded
    assert Image.open(io.BytesIO(first.data)).size == (32, 32)
    assert first.meta["edit"] is True and first.meta["seed"] == 7 and first.meta["steps"] == 2
    assert get_editor(resolved) is editor  # loaded once per process


def test_qwen_image_edit_plus_through_the_real_backend():
    from gems.configs import GeneratorSettings
    from tests.support.tiny_pipelines import tiny_qwen_image_edit_plus

    settings = GeneratorSettings(backend="diffusers", preset=None, model="tiny-qwen-edit", steps=2, width=32,
                                 height=32, negative_prompt=" ", call_kwargs={"true_cfg_scale": 4.0})  # fmt: skip
    editor = DiffusersEditor(settings, pipe=tiny_qwen_image_edit_plus())
    outs = editor.edit_many(_png(), "make the cat red", [1, 2])
    assert [o.meta["seed"] for o in outs] == [1, 2] and outs[0].data != outs[1].data
    assert one_image(editor.edit(_png(), "make the cat red", [1])).data == outs[0].data
    assert Image.open(io.BytesIO(outs[0].data)).size == (32, 32)


def test_a_text_to_image_pipeline_cannot_edit(tiny_sd_dir):
    from gems.configs import GeneratorSettings

    with pytest.raises(GeneratorError, match="takes no input image, so it cannot edit"):
        get_editor(GeneratorSettings(backend="diffusers", preset=None, model=str(tiny_sd_dir), device="cpu"))


def test_loop_with_a_local_edit_pipeline(stubs, tmp_path):
    """Generator over HTTP, editor a local FLUX.1 Kontext folder: round 2 is an edit made in this process."""
    from tests.support.tiny_pipelines import save_tiny_flux_kontext

    folder = save_tiny_flux_kontext(tmp_path / "kontext")
    s = stubs(criteria=CRITERIA, verdict=lambda q, n: "yes" if q != RED or n >= 2 else "no")
    settings = s.settings(
        loop={"refine_mode": "edit", "seed": 5},
        editor={"backend": "diffusers", "model": str(folder), "steps": 2, "width": 32, "height": 32,
                "device": "cpu", "call_kwargs": {"max_area": 1024, "_auto_resize": False}},
    )  # fmt: skip
    values = run(settings)
    assert values["success"] is True and s.gen.prompts == ["a red cat on a mat"]
    second = values["rounds"][1]
    assert second["mode"] == "edit" and second["image"]["edit"] is True and second["image"]["seed"] == 6
    assert second["image"]["backend"] == "diffusers" and second["fixed"] == [RED]
    assert values["generator_calls"] == 2
    assert json.dumps(values["rounds"], default=str)  # plain JSON in state


# --- bench ------------------------------------------------------------------------------------------------------


def test_bench_with_the_edit_ablation_reports_kept_fixed_broken(stubs, edit_server, tmp_path):
    from pathlib import Path

    import yaml

    from gems.interfaces.benchmarks.runner import run_bench

    s = stubs(
        criteria=CRITERIA,
        verdict_by_image=lambda q, made: "yes" if q != RED or (made or "").startswith("edit instruction") else "no",
    )
    endpoints = s.settings().model_dump(mode="json", exclude={"editor"})
    endpoints["mllm"]["api_key"] = endpoints["generator"]["api_key"] = None
    (tmp_path / "endpoints.yaml").write_text(yaml.safe_dump(endpoints))
    (tmp_path / "editor.yaml").write_text(yaml.safe_dump(
        {"editor": {"backend": "openai", "url": edit_server.base_url, "model": "stub-edit", "max_retries": 0}}
    ))  # fmt: skip
    settings = load_settings([tmp_path / "endpoints.yaml", "ablations/edit", tmp_path / "editor.yaml"], env={})
    assert (settings.loop.refine_mode, settings.editor.backend) == ("edit", "openai")
    data = Path(__file__).parent / "data" / "bench" / "prompts.txt"
    summary = run_bench(data, settings, "gems", tmp_path / "out", first=2, concurrency=2)

    assert summary["finished"] == 2 and len(s.gen.prompts) == 2
    changes = summary["self_check"]["round_changes"]
    assert changes["by_mode"]["edit"] == {"rounds": 2, "edits": 2, "kept": 4, "fixed": 2, "broken": 0, "keep_rate": 1.0}
    assert changes["per_round"][0]["edits"] == 2 and changes["label"].startswith("self-check")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Criteria kept, fixed and broken versus each round's base, self-check" in report
    assert "| all edit | 2 | 2 | 4 | 2 | 0 | 1" in report
    gallery = (tmp_path / "out" / "report.html").read_text()
    assert "edit of round 1" in gallery and "1 fixed, 0 broken" in gallery


def test_the_generators_own_pipeline_edits_when_it_takes_an_image(mllm_server, isolated_env, tmp_path):
    """editor.backend generator with a local FLUX.2 [klein]: one pipeline in memory draws round 1 and edits round 2."""
    from gems.nodes.generators import get_generator
    from tests.conftest import make_settings
    from tests.support.tiny_pipelines import save_tiny_flux2_klein

    folder = save_tiny_flux2_klein(tmp_path / "klein")
    mllm, _ = mllm_server(criteria=CRITERIA, verdict=lambda q, n: "yes" if q != RED or n >= 2 else "no")
    settings = make_settings(
        mllm, None, isolated_env,
        generator={"backend": "diffusers", "preset": None, "model": str(folder), "width": 64, "height": 64,
                   "steps": 2, "device": "cpu", "call_kwargs": {"text_encoder_out_layers": [1]}},
        editor={"backend": "generator"}, loop={"refine_mode": "edit", "seed": 1},
    )  # fmt: skip
    values = run(settings)
    assert values["success"] is True and [r["mode"] for r in values["rounds"]] == ["generate", "edit"]
    assert values["rounds"][1]["image"]["edit"] is True and values["rounds"][1]["image"]["model"] == str(folder)
    assert get_editor(editor_settings(settings)).pipe is get_generator(settings.generator).pipe  # type: ignore[attr-defined]


def test_cli_refine_mode_flag(stubs, edit_server, tmp_path):
    from tests.support.net import write_stub_config
    from tests.test_cli import error_lines, gems

    table = {"a red cat on a mat": {CAT, MAT}, "edit instruction 1": {CAT, RED, MAT}}
    s = stubs(criteria=CRITERIA, verdict_by_image=by_image(table))
    plain = write_stub_config(tmp_path / "plain.yaml", s.mllm.base_url, s.gen.url)
    refused = gems("generate", "a red cat on a mat", "--config", str(plain), "--refine-mode", "edit")
    assert refused.returncode == 2
    (line,) = error_lines(refused.stderr)
    assert line.startswith(f"gems: error: invalid config {plain}") and line.endswith(
        ": loop.refine_mode edit needs an editor: set editor.backend to diffusers, openai or generator"
    )
    editor = {"backend": "openai", "url": edit_server.base_url, "model": "stub-edit", "max_retries": 0}
    cfg = write_stub_config(tmp_path / "edit.yaml", s.mllm.base_url, s.gen.url, editor=editor)
    done = gems("generate", "a red cat on a mat", "--config", str(cfg), "--refine-mode", "edit",
                "--out", str(tmp_path / "out"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "refine     edit round 1's image: edit instruction 1" in done.stderr
    assert "critique   round 2: 3/3 criteria passed (2 kept, 1 fixed, 0 broken vs round 1)" in done.stderr
    trajectory = json.loads((tmp_path / "out" / "trajectory.json").read_text())
    assert trajectory["rounds"][1]["mode"] == "edit" and trajectory["settings"]["loop"]["refine_mode"] == "edit"
    assert "edit of round 1" in (tmp_path / "out" / "index.html").read_text()


def test_a_served_run_may_ask_for_edit_only_where_the_server_has_an_editor():
    from gems.configs import RunOptions

    options = RunOptions.model_validate({"loop": {"refine_mode": "auto"}})
    with pytest.raises(ConfigError, match=r"refine_mode auto needs an editor.*in the server's config"):
        options.apply(GemsSettings())
    editor = {"backend": "openai", "url": "http://127.0.0.1:1/v1", "model": "e"}
    served = GemsSettings.model_validate({"editor": editor})
    assert options.apply(served).loop.refine_mode == "auto"
    with pytest.raises(Exception, match="editor"):  # clients cannot point the server at another editor
        RunOptions.model_validate({"editor": {"backend": "openai"}})


def test_a_lesson_says_when_an_edit_fixed_it():
    from gems.memory.experiences import lesson_from_state

    state = {
        "prompt": "a red cat on a mat",
        "criteria": CRITERIA,
        "rounds": [
            {"round": 1, "prompt": "a red cat on a mat", "passed": [CAT, MAT], "failed": [RED], "mode": "generate"},
            {"round": 2, "prompt": "make the cat red", "passed": CRITERIA, "failed": [], "mode": "edit"},
        ],
        "final": {"passed": 3},
        "success": True,
    }
    lesson = lesson_from_state(state, GemsSettings(), "t")
    assert lesson is not None and 'An edit of the image fixed it, instructed: "make the cat red".' in lesson.text
