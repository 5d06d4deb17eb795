"""LangGraph Studio's server: `langgraph dev` serves the graph offline; driven with the real `langgraph_sdk`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.net import free_port, wait_until_up, write_stub_config

ROOT = Path(__file__).resolve().parents[1]
KEYS = "alice:key-a-0123456789abcdef,bob:key-b-0123456789abcdef"  # 16 characters or more, as servers require
CRITERIA = ["Is there a cat?", "Is the cat red?"]
pytestmark = pytest.mark.slow


@pytest.fixture
def studio(request, mllm_server, gen_server, tmp_path):
    """`langgraph dev` on a free loopback port, configured through GEMS_CONFIG to use the local stub servers.

    With `indirect` param `{"lessons": True}`, lessons are on and embedded by the stub's /v1/embeddings (8 dims).
    """
    lessons = getattr(request, "param", {}).get("lessons", False)
    keys = getattr(request, "param", {}).get("keys")
    langgraph = Path(sys.executable).with_name("langgraph")
    if not langgraph.exists():
        pytest.skip("langgraph-cli[inmem] is not installed (pip install -e '.[test]')")
    mllm, script = mllm_server(criteria=CRITERIA, verdict=lambda q, n: "yes" if n >= 2 else "no")
    gen = gen_server()
    sections: dict = {}
    if lessons:
        sections = {"memory": {"lessons": True}, "embeddings": {"provider": "openai", "base_url": mllm.base_url,
                                                               "model": "emb", "api_key": "sk-e"}}  # fmt: skip
    cfg = write_stub_config(tmp_path / "c.yaml", mllm.base_url, gen.url, **sections)
    work = tmp_path / "project"  # the server writes .langgraph_api/ into its working folder
    work.mkdir()
    config = json.loads((ROOT / "langgraph.json").read_text())  # as shipped: it names modules, not files
    if lessons:
        config["store"]["index"]["dims"] = 8  # the stub's embeddings
    (work / "langgraph.json").write_text(json.dumps(config))
    port = free_port()
    env = {
        **os.environ,
        "GEMS_CONFIG": str(cfg),
        "GEMS_DATA_DIR": str(tmp_path / "data"),
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "true",
        "LANGSMITH_TRACING": "false",
        **({"GEMS_API_KEYS": keys} if keys else {}),
    }
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed after the server stops)
    server = subprocess.Popen(
        [str(langgraph), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port)],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_up(f"{url}/ok", server, timeout=90)
        except AssertionError as exc:
            log_tail = (tmp_path / "server.log").read_text()[-3000:]
            pytest.fail(f"langgraph dev did not start ({exc}):\n{log_tail}")
        yield url, script, gen, tmp_path
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_langgraph_dev_runs_streams_and_keeps_history(studio):
    from langgraph_sdk import get_sync_client

    url, _, gen, tmp_path = studio
    client = get_sync_client(url=url)
    assistants = client.assistants.search(graph_id="gems")
    assert len(assistants) == 1
    schemas = client.assistants.get_schemas(assistants[0]["assistant_id"])
    # Studio's form: a prompt or chat messages (and options a trusted caller may pin).
    assert set(schemas["input_schema"]["properties"]) == {"prompt", "messages", "options"}
    assert "loop" in schemas["context_schema"]["properties"]

    thread = client.threads.create()
    chunks = list(client.runs.stream(thread["thread_id"], "gems", input={"prompt": "a red cat"}, stream_mode="updates"))
    nodes = [next(iter(c.data)) for c in chunks if c.event == "updates"]
    assert nodes.count("generate") == 2 and nodes[-1] == "learn"
    generated = [c.data["generate"] for c in chunks if c.event == "updates" and "generate" in c.data]
    assert generated[0]["candidates"][0]["sha256"]  # each round's image streams as it is made

    state = client.threads.get_state(thread["thread_id"])
    assert state["next"] == [] and state["values"]["success"] is True
    assert len(state["values"]["rounds"]) == 2
    history = client.threads.get_history(thread["thread_id"], limit=100)
    assert len(history) > 10
    assert {len(h["values"].get("rounds", [])) for h in history} == {0, 1, 2}
    assert (tmp_path / "data" / "server-checkpoints.sqlite").exists()  # the checkpointer from langgraph.json
    assert gen.prompts == ["a red cat", "refined prompt 1"]


def test_langgraph_dev_human_review_interrupt_and_resume(studio):
    from langgraph_sdk import get_sync_client

    url, _, gen, _ = studio
    client = get_sync_client(url=url)
    thread = client.threads.create()
    # A partial context overlays the server's config: only human_review changes.
    client.runs.wait(
        thread["thread_id"], "gems", input={"prompt": "a red cat"}, context={"loop": {"human_review": True}}
    )
    state = client.threads.get_state(thread["thread_id"])
    assert state["next"] == ["review"]
    payload = state["tasks"][0]["interrupts"][0]["value"]
    assert payload["criteria"] == CRITERIA and payload["first_prompt"] == "a red cat"
    assert gen.prompts == []  # nothing generated before the review

    client.runs.wait(
        thread["thread_id"],
        "gems",
        command={"resume": {"criteria": ["Is there a cat?"], "first_prompt": "a bright red cat, full body"}},
    )  # no context this time: the run remembers that it is under review
    state = client.threads.get_state(thread["thread_id"])
    assert state["next"] == [] and state["values"]["criteria"] == ["Is there a cat?"]
    assert gen.prompts[0] == "a bright red cat, full body"
    assert state["values"]["success"] is True


@pytest.mark.parametrize("studio", [{"lessons": True}], indirect=True)
def test_langgraph_dev_keeps_lessons_in_the_servers_own_store(studio):
    from langgraph_sdk import get_sync_client

    url, _, _, tmp_path = studio
    client = get_sync_client(url=url)
    first = client.threads.create()
    client.runs.wait(first["thread_id"], "gems", input={"prompt": "a red cat on a mat"})
    items = client.store.search_items(["gems", "lessons"])["items"]
    assert len(items) == 1 and items[0]["value"]["thread_id"] == first["thread_id"]
    second = client.threads.create()
    client.runs.wait(second["thread_id"], "gems", input={"prompt": "a red cat on a mat"})
    lessons = client.threads.get_state(second["thread_id"])["values"]["lessons"]
    assert [lesson["id"] for lesson in lessons] == [items[0]["key"]] and lessons[0]["relevance"] > 0.9
    assert not (tmp_path / "data" / "chroma").exists()  # the server's store, not gems' own Chroma folder


def test_langgraph_dev_takes_only_run_options_from_a_request(studio, tmp_path):
    """A client's context cannot point the server's MLLM (and its key) elsewhere, nor move where it writes."""
    from langgraph_sdk import get_sync_client

    from tests.support.servers import OpenAIStub

    url, _, gen, _ = studio
    attacker = OpenAIStub().start()
    client = get_sync_client(url=url)
    schema = client.assistants.get_schemas(client.assistants.search(graph_id="gems")[0]["assistant_id"])
    assert set(schema["context_schema"]["properties"]) == {"loop", "memory", "skills"}
    elsewhere = tmp_path / "elsewhere"
    try:
        thread = client.threads.create()
        context = {"mllm": {"base_url": attacker.base_url}, "data_dir": str(elsewhere), "loop": {"max_rounds": 1}}
        try:
            result = client.runs.wait(thread["thread_id"], "gems", input={"prompt": "a red cat"}, context=context)
            refusal = json.dumps(result)
        except Exception as exc:  # refused before any work: 422 naming the fields
            response = getattr(exc, "response", None)
            assert response is not None and response.status_code == 422
            refusal = response.text
        assert "mllm" in refusal and "data_dir" in refusal
        assert attacker.requests == [] and not elsewhere.exists() and gen.prompts == []
        # Run options still work.
        ok = client.runs.wait(thread["thread_id"], "gems", input={"prompt": "a red cat"},
                              context={"loop": {"max_rounds": 1}})  # fmt: skip
        assert ok["final"]["round"] == 1 and len(gen.prompts) == 1
    finally:
        attacker.stop()


@pytest.mark.parametrize("studio", [{"keys": KEYS}], indirect=True)
def test_langgraph_dev_needs_a_key_and_keeps_each_callers_threads_apart(studio):
    from langgraph_sdk import get_sync_client

    url, _, gen, _ = studio
    nobody = get_sync_client(url=url, api_key=None)
    with pytest.raises(Exception, match="missing or wrong API key"):
        nobody.threads.create()
    alice = get_sync_client(url=url, api_key=None, headers={"X-API-Key": "key-a-0123456789abcdef"})
    bob = get_sync_client(url=url, api_key=None, headers={"Authorization": "Bearer key-b-0123456789abcdef"})
    thread = alice.threads.create()
    done = alice.runs.wait(
        thread["thread_id"], "gems", input={"prompt": "a red cat"}, context={"loop": {"max_rounds": 1}}
    )
    assert done["final"]["round"] == 1
    assert [t["thread_id"] for t in alice.threads.search()] == [thread["thread_id"]]
    assert bob.threads.search() == []
    with pytest.raises(Exception, match="not found"):
        bob.threads.get(thread["thread_id"])
    with pytest.raises(Exception, match=r"not found|40[34]"):
        bob.runs.wait(thread["thread_id"], "gems", input={"prompt": "bob's prompt"})
    assert len(gen.prompts) == 1  # bob's run never started


@pytest.mark.parametrize("studio", [{"keys": KEYS, "lessons": True}], indirect=True)
def test_langgraph_dev_keeps_each_callers_lessons_apart(studio):
    from langgraph_sdk import get_sync_client

    url, _, _, _ = studio
    alice = get_sync_client(url=url, api_key=None, headers={"X-API-Key": "key-a-0123456789abcdef"})
    bob = get_sync_client(url=url, api_key=None, headers={"X-API-Key": "key-b-0123456789abcdef"})
    one_round = {"loop": {"max_rounds": 1}}

    def run(client, prompt: str) -> dict:
        thread = client.threads.create()
        client.runs.wait(thread["thread_id"], "gems", input={"prompt": prompt}, context=one_round)
        return client.threads.get_state(thread["thread_id"])["values"]

    assert run(alice, "alice secret: a portrait of my passport")["lesson_id"]
    assert run(bob, "alice secret: a portrait of my passport")["lessons"] == []  # the same prompt, another tenant
    assert run(alice, "alice secret: a portrait of my passport")["lessons"]  # her own lesson comes back
