"""Agent Memory: trajectory memory modes, and the cross-run Chroma store with a real offline embedding model."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image
from pydantic import ValidationError

from gems.configs import GemsSettings
from gems.graph import build_graph, run_config
from gems.interfaces.cli import main as gems_main
from gems.memory.artifacts import ArtifactStore
from gems.memory.experiences import ExperienceStore, Lesson, StoreError, lesson_from_state
from gems.memory.trajectory import MODE_LAYERS, context_size
from gems.nodes.prompts.refine import refiner_parts
from tests.conftest import make_settings
from tests.support.net import free_port, wait_until_up
from tests.support.servers import fake_embedding

CRITERIA = ["Is there a cat?", "Is the cat red?", "Is the cat on a mat?"]


def red_fails_until(k: int):
    return lambda q, n: "yes" if q != "Is the cat red?" or n >= k else "no"


# --- trajectory memory -------------------------------------------------------------------------------


def scripted_state(store: ArtifactStore, rounds: int = 4) -> dict:
    records = []
    for r in range(1, rounds + 1):
        ref = store.put_image(Image.new("RGB", (16, 16), (r * 40, 0, 0)))
        records.append(
            {
                "round": r,
                "prompt": f"prompt {r}",
                "thought": f"thought {r}",
                "image": ref,
                "passed": ["Is there a cat?"],
                "failed": ["Is the cat red?"],
                "experience": f"experience {r}",
            }
        )
    return {"prompt": "a red cat", "rounds": records}


def texts(parts) -> str:
    return "\n".join(p["text"] for p in parts if p["type"] == "text")


@pytest.mark.parametrize(
    ("mode", "attempts", "images", "thoughts", "experiences"),
    [
        ("last", 1, 1, 0, 0),
        ("feedback", 4, 0, 0, 0),
        ("images", 4, 4, 0, 0),
        ("thought", 4, 4, 4, 0),
        ("experience", 4, 4, 0, 4),
    ],
)
def test_memory_modes_reproduce_the_ablation_rows(tmp_path, mode, attempts, images, thoughts, experiences):
    store = ArtifactStore(tmp_path)
    settings = GemsSettings(memory={"mode": mode})
    parts = refiner_parts(scripted_state(store), settings, store)
    body = texts(parts)
    assert body.startswith("Original request (the intent every prompt must serve):\na red cat")
    assert body.count("## Attempt") == attempts
    assert context_size(parts)["image_parts"] == images
    assert body.count("Reasoning behind this prompt") == thoughts
    assert body.count("Lesson from this attempt") == experiences
    assert body.count("Requirements it failed") == attempts
    if mode == "last":
        assert "prompt 4" in body and "prompt 3" not in body


def test_image_window_bounds_how_many_images_are_sent(tmp_path):
    store = ArtifactStore(tmp_path)
    state = scripted_state(store)
    for window, expected in ((None, 4), (2, 2), (0, 0)):
        settings = GemsSettings(memory={"image_window": window})
        parts = refiner_parts(state, settings, store)
        assert context_size(parts)["image_parts"] == expected
        assert texts(parts).count("## Attempt") == 4  # the text history stays whole


def test_compressor_is_skipped_when_the_mode_has_no_experiences(stubs):
    s = stubs(criteria=CRITERIA, verdict=red_fails_until(3))
    settings = s.settings(memory={"lessons": False, "mode": "images"})
    graph = build_graph(checkpointer=InMemorySaver())
    graph.invoke({"prompt": "a red cat on a mat"}, run_config(settings, "m"), context=settings)
    assert s.script.calls["compress"] == 0 and s.script.calls["refine"] == 2
    assert set(MODE_LAYERS) == {"last", "feedback", "images", "thought", "experience"}


# --- lessons ---------------------------------------------------------------------------------------


def test_lesson_records_what_was_hard_and_what_fixed_it():
    state = {
        "prompt": "a red cat on a mat",
        "criteria": CRITERIA,
        "skill": "spatial-layout",
        "success": True,
        "final": {"round": 3, "passed": 3},
        "rounds": [
            {"round": 1, "prompt": "p1", "passed": CRITERIA[:1], "failed": CRITERIA[1:], "experience": "e1"},
            {"round": 2, "prompt": "p2", "passed": CRITERIA[:2], "failed": CRITERIA[2:], "experience": "e2"},
            {"round": 3, "prompt": "p3", "passed": CRITERIA, "failed": []},
        ],
    }
    settings = GemsSettings(generator={"backend": "http", "preset": None, "model": "zit-server"})
    lesson = lesson_from_state(state, settings, "thread-9")
    assert lesson.hard_criteria == CRITERIA[1:] and lesson.fixed_by == "p3"
    assert (lesson.outcome, lesson.rounds, lesson.passed, lesson.total) == ("success", 3, 3, 3)
    assert (lesson.generator_model, lesson.generator_backend, lesson.skill) == ("zit-server", "http", "spatial-layout")
    assert 'Wording that fixed it: "p3"' in lesson.text and "Last insight: e2" in lesson.text
    assert lesson.id == lesson_from_state(state, settings, "thread-9").id  # one id per thread
    assert lesson_from_state({**state, "criteria": []}, settings, "t") is None


def lesson(prompt: str, model: str = "zit", thread: str | None = None) -> Lesson:
    return Lesson(
        prompt=prompt, text=f"about {prompt}", outcome="success", rounds=2, passed=3, total=3,
        generator_model=model, thread_id=thread or prompt,
    )  # fmt: skip


def test_store_crud_threshold_and_filter(tmp_path):
    store = ExperienceStore(GemsSettings(data_dir=tmp_path))
    assert store.count() == 0 and store.search("anything") == []
    for item in (lesson("a cat sleeping on a windowsill"), lesson("a bowl of ramen, studio photo"),
                 lesson("a kitten napping by the window", model="flux")):  # fmt: skip
        store.add(item)
    hits = store.search("a cat asleep near a window", k=3)
    assert hits[0][0].prompt == "a cat sleeping on a windowsill" and hits[0][1] > 0.6
    assert [h[0].prompt for h in store.search("a cat asleep near a window", k=3, min_relevance=0.5)] == [
        "a cat sleeping on a windowsill",
        "a kitten napping by the window",
    ]
    only_zit = store.search("a cat asleep near a window", k=3, where={"generator_model": "zit"})
    assert all(h[0].generator_model == "zit" for h in only_zit) and len(only_zit) == 2
    # Writing the same thread's lesson again replaces it.
    store.add(lesson("a cat sleeping on a windowsill"))
    assert store.count() == 3
    first = store.list()[0]
    assert store.get(first.id) == first and store.get("missing") is None
    exported = tmp_path / "lessons.jsonl"
    assert store.export(exported) == 3
    assert store.delete([first.id]) == 1 and store.count() == 2
    assert store.clear() == 2 and store.count() == 0
    assert store.import_(exported) == 3 and store.count() == 3


def test_lesson_from_run_a_reaches_the_planner_and_refiner_of_run_b(mllm_server, gen_server, isolated_env):
    # "Is the cat red?" fails on its 1st, 3rd, ... attempt: round 1 of each run fails, round 2 passes.
    mllm, script = mllm_server(
        criteria=CRITERIA, verdict=lambda q, n: "no" if q == "Is the cat red?" and n % 2 else "yes"
    )
    gen = gen_server()
    settings = make_settings(mllm, gen, isolated_env, memory={"lessons": True}, generator={"model": "zit"})
    graph = build_graph(checkpointer=InMemorySaver())
    graph.invoke({"prompt": "a red cat on a mat"}, run_config(settings, "A"), context=settings)
    store = ExperienceStore(settings)
    assert store.count() == 1
    learned = store.list()[0]
    assert learned.hard_criteria == ["Is the cat red?"] and learned.fixed_by == "refined prompt 1"
    # Run A's router saw no lessons (the store was empty).
    assert "Lessons from similar earlier requests" not in str(script.bodies["route"][0])

    values = graph.invoke({"prompt": "a red cat sitting on a mat"}, run_config(settings, "B"), context=settings)
    router_prompt = script.bodies["route"][1]["messages"][0]["content"]  # the planner's system prompt
    assert "Lessons from similar earlier requests" in router_prompt
    assert 'Wording that fixed it: "refined prompt 1"' in router_prompt
    assert values["lessons"][0]["id"] == learned.id and values["lessons"][0]["relevance"] > 0.8
    assert script.calls["refine"] == 2
    assert "Lessons from similar earlier requests" not in str(script.bodies["refine"][0])
    assert "Lessons from similar earlier requests" in str(script.bodies["refine"][1])
    assert store.count() == 2

    # An unrelated prompt, or another generator model, gets no lesson.
    graph.invoke({"prompt": "a spreadsheet of quarterly tax data"}, run_config(settings, "C"), context=settings)
    assert "Lessons from similar" not in str(script.bodies["route"][2])
    other = settings.model_copy(update={"generator": settings.generator.model_copy(update={"model": "flux"})})
    graph.invoke({"prompt": "a red cat on a mat"}, run_config(other, "D"), context=other)
    assert "Lessons from similar" not in str(script.bodies["route"][3])


def test_lessons_off_reproduces_the_paper_prompts(stubs, isolated_env):
    s = stubs(criteria=CRITERIA, verdict=red_fails_until(2))
    settings = s.settings(memory={"lessons": False})
    graph = build_graph(checkpointer=InMemorySaver())
    for thread in ("A", "B"):
        graph.invoke({"prompt": "a red cat on a mat"}, run_config(settings, thread), context=settings)
    assert s.script.bodies["route"][0]["messages"] == s.script.bodies["route"][1]["messages"]
    assert not (isolated_env / "chroma").exists()


def test_parallel_runs_in_threads_lose_no_lesson(stubs):
    s = stubs(criteria=CRITERIA[:1])
    settings = s.settings(memory={"lessons": True})
    graph = build_graph(checkpointer=InMemorySaver())
    errors = []

    def worker(w: int) -> None:
        try:
            for i in range(10):
                prompt = f"worker {w} scene {i}: a red cat on a mat"
                graph.invoke({"prompt": prompt}, run_config(settings, f"w{w}-{i}"), context=settings)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = ExperienceStore(settings)
    lessons = store.list()
    assert len(lessons) == 40 and len({x.thread_id for x in lessons}) == 40
    hit = store.search("worker 2 scene 7: a red cat on a mat", k=1)[0][0]
    assert hit.thread_id == "w2-7"


@pytest.mark.slow
def test_parallel_runs_in_processes_lose_no_lesson(stubs, tmp_path):
    s = stubs(criteria=CRITERIA[:1])
    settings = s.settings(memory={"lessons": True})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(json.loads(settings.model_dump_json()) | {"mllm": {
        **json.loads(settings.mllm.model_dump_json()), "api_key": "sk-test"}}))  # fmt: skip
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.support.run_many", str(cfg), f"p{w}", "10"], cwd=Path.cwd())
        for w in range(4)
    ]
    assert [p.wait(300) for p in procs] == [0, 0, 0, 0]
    store = ExperienceStore(settings)
    lessons = store.list()
    assert len(lessons) == 40 and len({x.thread_id for x in lessons}) == 40
    for w in range(4):
        assert store.search(f"p{w} scene 3: a red cat on a mat", k=1)[0][0].thread_id == f"p{w}-3"


def test_missing_store_is_recreated_and_corrupt_store_never_fails_a_run(stubs):
    import shutil

    s = stubs(criteria=CRITERIA[:1])
    settings = s.settings(memory={"lessons": True})
    graph = build_graph(checkpointer=InMemorySaver())
    graph.invoke({"prompt": "a cat"}, run_config(settings, "1"), context=settings)
    shutil.rmtree(settings.chroma_path)
    graph.invoke({"prompt": "a cat"}, run_config(settings, "2"), context=settings)
    assert ExperienceStore(settings).count() == 1

    shutil.rmtree(settings.chroma_path)
    settings.chroma_path.mkdir()
    (settings.chroma_path / "chroma.sqlite3").write_bytes(b"this is not a database" * 100)
    values = graph.invoke({"prompt": "a cat"}, run_config(settings, "3"), context=settings)
    assert values["success"] is True and values["final"]["image"]["sha256"]
    assert any(w.startswith("lessons unavailable: the store at") for w in values["warnings"])
    assert any(w.startswith("lesson not stored:") for w in values["warnings"])
    with pytest.raises(StoreError, match="move the folder away and gems will start a new one"):
        ExperienceStore(settings).count()


def test_memory_cli(capsys, isolated_env, tmp_path):
    store = ExperienceStore(GemsSettings(data_dir=isolated_env))
    for prompt in ("a cat on a mat", "a bowl of ramen", "a lighthouse at dusk"):
        store.add(lesson(prompt))

    assert gems_main(["memory", "list"]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 3 and "3 lesson(s)" in out.err
    assert gems_main(["memory", "list", "--config", "cpu"]) == 0  # --config after the action works too
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert gems_main(["memory", "search", "noodle soup", "-k", "1"]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert "a bowl of ramen" in first_line
    lesson_id = first_line.split()[0]
    assert gems_main(["memory", "show", lesson_id]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == "a bowl of ramen"
    export = tmp_path / "x.jsonl"
    assert gems_main(["memory", "export", str(export)]) == 0 and len(export.read_text().splitlines()) == 3
    assert gems_main(["memory", "forget", lesson_id]) == 0 and store.count() == 2
    assert gems_main(["memory", "forget", lesson_id]) == 2
    assert "no lesson with id" in capsys.readouterr().err
    assert gems_main(["memory", "forget", "--all"]) == 0 and store.count() == 0
    assert gems_main(["memory", "import", str(export)]) == 0 and store.count() == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert gems_main(["memory", "import", str(bad)]) == 1
    assert f"{bad} line 1 is not a lesson" in capsys.readouterr().err


def test_memory_cli_reads_and_writes_one_tenants_lessons(capsys, isolated_env, tmp_path):
    shared = ExperienceStore(GemsSettings(data_dir=isolated_env))
    alice = ExperienceStore(GemsSettings(data_dir=isolated_env, memory={"tenant": "alice"}))
    assert alice.namespace == ("gems", "tenants", "alice", "lessons")  # where gems serve keeps key alice's lessons
    shared.add(lesson("a lighthouse at dusk"))
    alice.add_many([lesson("alice: a cat on a mat"), lesson("alice: a bowl of ramen")])

    assert gems_main(["memory", "list"]) == 0
    out = capsys.readouterr()
    assert [line.split("  ")[-1] for line in out.out.splitlines()] == ["a lighthouse at dusk"]
    assert "tenants with lessons here: alice (gems memory list --tenant NAME)" in out.err
    for args in (["memory", "list", "--tenant", "alice"], ["memory", "--tenant", "alice", "list"]):
        assert gems_main(args) == 0
        out = capsys.readouterr()
        assert sorted(line.split("  ")[-1] for line in out.out.splitlines()) == [
            "alice: a bowl of ramen", "alice: a cat on a mat"]  # fmt: skip
        assert "2 lesson(s) of tenant alice in" in out.err
    assert gems_main(["memory", "search", "noodle soup ramen", "-k", "1", "--tenant", "alice"]) == 0
    ramen = capsys.readouterr().out.splitlines()[0]
    assert "alice: a bowl of ramen" in ramen
    ramen_id = ramen.split()[0]
    assert gems_main(["memory", "show", ramen_id]) == 2  # not among the shared lessons
    assert "no lesson with id" in capsys.readouterr().err
    assert gems_main(["memory", "show", ramen_id, "--tenant", "alice"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == "alice: a bowl of ramen"

    # Export one tenant's lessons, import them into another's: the shared lessons and alice's stay as they were.
    export = tmp_path / "alice.jsonl"
    assert gems_main(["memory", "export", str(export), "--tenant", "alice"]) == 0
    assert len(export.read_text().splitlines()) == 2
    assert gems_main(["memory", "import", str(export), "--tenant", "bob"]) == 0
    bob = ExperienceStore(GemsSettings(data_dir=isolated_env, memory={"tenant": "bob"}))
    assert bob.count() == 2 and alice.count() == 2 and shared.count() == 1
    assert gems_main(["memory", "forget", "--all", "--tenant", "bob"]) == 0
    assert bob.count() == 0 and alice.count() == 2 and shared.count() == 1
    assert gems_main(["memory", "forget", ramen_id, "--tenant", "alice"]) == 0 and alice.count() == 1
    capsys.readouterr()

    for bad in ("../alice", "team.alice"):  # '.': LangGraph's store refuses it in a namespace label
        assert gems_main(["memory", "list", "--tenant", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("gems: error:") == 1 and "a tenant is 1-64 letters, digits" in err and "Traceback" not in err
    with pytest.raises(ValidationError, match="tenant"):
        GemsSettings(data_dir=isolated_env, memory={"tenant": "team.alice"})


@pytest.mark.slow
def test_memory_list_tenant_sees_the_lessons_gems_serve_kept_for_a_key(mllm_server, gen_server, isolated_env,
                                                                      monkeypatch, capsys):  # fmt: skip
    pytest.importorskip("langserve")
    import httpx

    from gems.interfaces.serve import create_app
    from tests.test_serve import ALICE, BOB, Served

    mllm, _ = mllm_server(criteria=["Is there a cat?"])
    settings = make_settings(mllm, gen_server(), isolated_env, memory={"lessons": True}, skills={"enabled": False})
    monkeypatch.setenv("GEMS_API_KEYS", f"alice:{ALICE},bob:{BOB}")
    with Served(create_app(settings)) as server:
        answer = httpx.post(f"{server.url}/gems/invoke", json={"input": {"prompt": "a cat in alice's garden"}},
                            headers={"X-API-Key": ALICE}, timeout=60)  # fmt: skip
        assert answer.status_code == 200, answer.text
    assert gems_main(["memory", "list", "--tenant", "alice"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0].endswith("a cat in alice's garden") and "1 lesson(s) of tenant alice" in out.err
    assert gems_main(["memory", "list"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "tenants with lessons here: alice" in out.err


@pytest.mark.slow
def test_client_server_store_against_a_real_chroma_server(tmp_path):
    chroma = Path(sys.executable).with_name("chroma")
    if not chroma.exists():
        pytest.skip("the chroma CLI is not installed next to this Python")
    port = free_port()
    server = subprocess.Popen(
        [str(chroma), "run", "--path", str(tmp_path / "srv"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/api/v2/heartbeat", server)
        settings = GemsSettings(data_dir=tmp_path / "local", memory={"chroma": {"host": "127.0.0.1", "port": port}})
        store = ExperienceStore(settings)
        store.add(lesson("a cat on a mat"))
        store.add(lesson("a lighthouse at dusk"))
        assert store.count() == 2
        assert store.search("a kitten on a rug", k=1)[0][0].prompt == "a cat on a mat"
        assert not (tmp_path / "local" / "chroma").exists()  # nothing embedded was written

        async def finish_together() -> None:  # 64 runs of one bench writing their lessons at once
            await asyncio.gather(*(asyncio.to_thread(store.add, lesson(f"scene {i}")) for i in range(64)))

        asyncio.run(finish_together())
        assert store.count() == 66
    finally:
        server.terminate()
        server.wait(30)
    with pytest.raises(StoreError, match=f"cannot use the Chroma server 127.0.0.1:{port}"):
        ExperienceStore(settings).count()


def test_embeddings_from_an_openai_compatible_endpoint(tmp_path):
    from gems.configs import EmbeddingSettings
    from gems.memory.embeddings import get_embeddings
    from tests.support.servers import OpenAIStub

    server = OpenAIStub().start()
    try:
        settings = EmbeddingSettings(provider="openai", model="embed-small", base_url=server.base_url, api_key="sk-e")
        embeddings = get_embeddings(settings)
        vectors = embeddings.embed_documents(["a red cat", "a blue dog"])
        assert len(vectors) == 2 and len(vectors[0]) == 8
        # The same factory feeds the lesson store: similar prompts retrieve each other.
        store = ExperienceStore(GemsSettings(data_dir=tmp_path, embeddings=settings.model_dump()))
        store.add(lesson("a red cat on a mat"))
        store.add(lesson("quarterly tax spreadsheet"))
        assert store.search("red cat", k=1)[0][0].prompt == "a red cat on a mat"
    finally:
        server.stop()
    requests = [r for r in server.requests if r["path"] == "/v1/embeddings"]
    assert requests and requests[0]["body"]["model"] == "embed-small"
    assert isinstance(requests[0]["body"]["input"][0], str)  # text, not token ids: no tiktoken download offline


def test_local_embedding_model_leaves_the_hub_setting_alone(monkeypatch):
    from gems.memory.embeddings import LocalEmbeddings

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    embeddings = LocalEmbeddings()  # the bundled folder loads without the hub...
    assert len(embeddings.embed_query("a cat")) == 384
    assert "HF_HUB_OFFLINE" not in os.environ  # ...and later downloads of generator weights stay possible


@pytest.mark.slow
def test_local_embeddings_skip_torch_and_match_sentence_transformers():
    import numpy as np

    from gems.configs import EmbeddingSettings
    from gems.memory.embeddings import LocalEmbeddings, bundled_model, get_embeddings
    from gems.memory.encoder import NumpySentenceEncoder

    fast = get_embeddings(EmbeddingSettings())
    assert isinstance(fast, NumpySentenceEncoder)
    code = "import sys; from gems.configs import EmbeddingSettings; from gems.memory.embeddings import get_embeddings; "
    code += "get_embeddings(EmbeddingSettings()).embed_query('a cat'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    texts = ["a red cat on a mat", "Spatial layout: objects left of, right of and above each other", "x " * 300,
             'a neon sign reading "OPEN 24 HOURS" above a diner door', "三只红苹果", ""]  # fmt: skip
    ours = np.array(fast.embed_documents(texts))
    theirs = np.array(LocalEmbeddings(bundled_model()).embed_documents(texts))
    assert (ours * theirs).sum(axis=1).min() >= 0.999


def test_skill_index_vectors_are_cached_on_disk(tmp_path):
    from langchain_core.embeddings import Embeddings

    from gems.skills.registry import SkillRegistry, bundled_library
    from gems.skills.retrieval import SkillIndex

    class Counting(Embeddings):
        name = "counting-fake"

        def __init__(self) -> None:
            self.texts = 0

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            self.texts += len(texts)
            return [fake_embedding(t) for t in texts]

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    registry = SkillRegistry()
    registry.add_folder(bundled_library())
    first, second = Counting(), Counting()
    ranked = SkillIndex(registry, first, tmp_path).search("three red apples on a plate", k=3)
    assert first.texts > len(registry)  # every routing text embedded once, plus the query
    assert SkillIndex(registry, second, tmp_path).search("three red apples on a plate", k=3) == ranked
    assert second.texts == 1  # only the query: the library's vectors came from the cache
    assert len(list(tmp_path.glob("skill-index-*.json"))) == 1
