"""Checkpoints, artifacts and the graph's shape."""

from __future__ import annotations

import sqlite3

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image

from gems.configs.settings import MAX_ROUNDS
from gems.graph import build_graph, graph, run_config
from gems.graph.routing import recursion_limit_for
from gems.memory.artifacts import ArtifactError, ArtifactStore
from gems.memory.checkpoint import open_checkpointer
from tests.conftest import make_settings

CRITERIA = ["Is there a cat?", "Is the cat red?"]


def test_sqlite_checkpoints_stay_small_with_large_images(mllm_server, gen_server, isolated_env):
    mllm, _ = mllm_server(criteria=CRITERIA, verdict=lambda q, n: "no")
    gen = gen_server(size=512, noise=True)  # ~790 KB PNGs: in state, one would blow the budget alone
    settings = make_settings(mllm, gen, isolated_env, storage={"checkpointer": "sqlite"})
    with open_checkpointer(settings) as saver:
        compiled = build_graph(checkpointer=saver)
        config = run_config(settings, "big")
        compiled.invoke({"prompt": "a red cat"}, config, context=settings, durability="sync")
        history = list(compiled.get_state_history(config))
    image_bytes = [p.stat().st_size for p in (isolated_env / "artifacts").glob("*.png")]
    assert len(image_bytes) == 5 and min(image_bytes) > 700_000
    conn = sqlite3.connect(settings.sqlite_path)
    sizes = [row[0] for row in conn.execute("SELECT length(checkpoint) + length(metadata) FROM checkpoints")]
    top = conn.execute("SELECT count(*) FROM checkpoints WHERE checkpoint_ns = ''").fetchone()[0]  # not the planner's
    writes = [row[0] for row in conn.execute("SELECT length(value) FROM writes")]
    conn.close()
    assert top == len(history) > 20
    print(f"checkpoints: {len(sizes)}, largest {max(sizes)} B; largest write {max(writes)} B")
    assert max(sizes) < 100_000, max(sizes)
    assert max(writes) < 100_000
    # Time travel shows the trajectory round by round.
    rounds_seen = sorted({len(s.values.get("rounds", [])) for s in history})
    assert rounds_seen == [0, 1, 2, 3, 4, 5]


def test_state_holds_references_not_bytes(stubs):
    s = stubs(criteria=CRITERIA)
    settings = s.settings()
    compiled = build_graph(checkpointer=InMemorySaver())
    config = run_config(settings, "refs")
    result = compiled.invoke({"prompt": "a red cat"}, config, context=settings)
    # The output schema keeps the public result small.
    assert set(result) == {
        "messages", "prompt", "skill", "skill_trace", "criteria", "round", "current_prompt", "candidates", "verdicts",
        "rounds", "final", "success", "lessons", "warnings",
    }  # fmt: skip
    image = result["final"]["image"]
    assert set(image) >= {"sha256", "width", "height", "seed", "backend", "model", "steps"}
    assert "path" not in image  # no file path in state: what a server sends names images by digest
    assert ArtifactStore(settings.artifacts_dir).path_for(image["sha256"]).exists()

    def walk(value):
        assert not isinstance(value, bytes | bytearray)
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(compiled.get_state(config).values)


def test_artifact_store_is_content_addressed(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    image = Image.new("RGB", (300, 200), (1, 2, 3))
    ref = store.put_image(image, seed=4)
    again = store.put_image(image, seed=4)
    assert ref == again and ref["width"] == 300 and ref["seed"] == 4
    assert len(list((tmp_path / "a").iterdir())) == 1
    assert store.open(ref).getpixel((0, 0)) == (1, 2, 3)
    small = store.data_url(ref, max_side=100)
    assert small.startswith("data:image/png;base64,") and len(small) < len(store.data_url(ref))
    with pytest.raises(ArtifactError, match="not an artifact id"):
        store.path_for("../../etc/passwd")
    with pytest.raises(ArtifactError, match="is missing"):
        store.read_bytes("0" * 64)
    with pytest.raises(ArtifactError, match="not an image"):
        store.put_bytes(b"<html>error</html>")


def test_jpeg_from_a_backend_is_stored_as_png(tmp_path):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(buf, format="JPEG")
    ref = ArtifactStore(tmp_path).put_bytes(buf.getvalue())
    assert Image.open(ArtifactStore(tmp_path).path_for(ref["sha256"])).format == "PNG"


def test_graph_draws_the_loop():
    mermaid = graph.get_graph().draw_mermaid()
    for edge in (
        "__start__ --> intake",
        "intake --> planner",
        "intake --> decompose",
        "planner --> review",
        "decompose --> review",
        "review --> generate",
        "generate -.-> verify",
        "generate -.-> finalize",
        "verify --> critique",
        "critique -.-> compress",
        "critique -.-> review_round",
        "critique -.-> finalize",
        "review_round -.-> compress",
        "review_round -.-> finalize",
        "compress --> refine",
        "refine --> generate",
        "finalize --> learn",
        "learn --> __end__",
    ):
        assert edge in mermaid
    # The planner is a subgraph: its tool loop shows when the drawing looks inside.
    inside = graph.get_graph(xray=True).draw_mermaid()
    for edge in ("planner\\3aplan -.-> planner\\3askills", "planner\\3askills --> planner\\3aplan",
                 "planner\\3aplan -.-> planner\\3aprepare"):  # fmt: skip
        assert edge in inside, edge
    assert graph.checkpointer is None  # servers bring their own


def test_recursion_limit_leaves_room_for_the_most_rounds_a_run_may_pin(stubs):
    s = stubs(criteria=CRITERIA, verdict=lambda q, n: "no")
    settings = s.settings(loop={"max_rounds": 8})
    config = run_config(settings, "r")
    assert config["recursion_limit"] == recursion_limit_for(MAX_ROUNDS) > recursion_limit_for(8)
    compiled = build_graph(checkpointer=InMemorySaver())
    compiled.invoke({"prompt": "x"}, config, context=settings)
    assert len(s.gen.prompts) == 8  # the limit leaves room for every round
