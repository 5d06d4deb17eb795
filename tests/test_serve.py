"""`gems serve`: LangServe over real HTTP with `langserve.RemoteRunnable`, auth, validation, limits, artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import make_settings
from tests.support.net import free_port, wait_until_up

CRITERIA = ["Is there a cat?", "Is the cat red?"]
KEY = "s3cret-key-0123456789"  # keys have 16 characters at least
ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789ab"
pytestmark = pytest.mark.slow


class Served:
    """`app` on a free port, in a thread, with the uvicorn options `gems serve` uses."""

    def __init__(self, app, **options):
        import uvicorn

        from gems.interfaces.serve import uvicorn_options

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {**uvicorn_options(), **options}
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    **config))  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served(mllm_server, gen_server, isolated_env):
    pytest.importorskip("langserve")
    from gems.interfaces.serve import create_app

    def start(api_key=KEY, max_concurrent=2, queue_timeout_s=30.0, **gen_options):
        # Round 1 (the request as written) fails, round 2 (a refined prompt) passes, however runs overlap.
        mllm, script = mllm_server(
            criteria=CRITERIA,
            verdict_by_image=lambda q, prompt: "yes" if (prompt or "").startswith("refined") else "no",
        )
        gen = gen_server(**gen_options)
        settings = make_settings(mllm, gen, isolated_env, skills={"top_k": 20})
        app = create_app(settings, api_key=api_key, max_concurrent=max_concurrent, queue_timeout_s=queue_timeout_s)
        return Served(app), script, gen

    return start


def remote(url: str, **headers):
    from langserve import RemoteRunnable

    return RemoteRunnable(f"{url}/gems", headers={"X-API-Key": KEY, **headers})


def test_invoke_stream_batch_and_artifacts(served):
    server, _, _ = served()
    with server:
        result = remote(server.url).invoke({"prompt": "a red cat"})
        assert result["success"] is True and len(result["rounds"]) == 2
        image = result["final"]["image"]
        assert image["url"] == f"/artifacts/{image['sha256']}.png"
        png = httpx.get(server.url + image["url"], headers={"X-API-Key": KEY})
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content[:8] == b"\x89PNG\r\n\x1a\n"

        chunks = list(remote(server.url).stream({"prompt": "a red cat"}))
        nodes = [c["node"] for c in chunks]
        assert nodes.count("generate") == 2 and nodes[-1] == "__end__"
        first_image = next(c for c in chunks if c["node"] == "generate")["update"]["candidates"][0]
        assert first_image["url"].startswith("/artifacts/")  # each round's image streams as it is made
        assert chunks[-1]["result"]["success"] is True

        results = remote(server.url).batch([{"prompt": "a red cat"}, {"prompt": "a blue cat"}])
        assert [r["success"] for r in results] == [True, True]
        assert len({r["thread_id"] for r in results}) == 2

        events = httpx.post(
            f"{server.url}/gems/stream_events", json={"input": {"prompt": "a cat"}}, headers={"X-API-Key": KEY},
            timeout=60,
        )  # fmt: skip
        assert events.status_code == 200 and "on_chain_stream" in events.text


def test_thread_header_continues_and_never_generates_twice(served):
    server, _, gen = served()
    with server:
        first = remote(server.url, **{"X-Thread-Id": "job-42"}).invoke({"prompt": "a red cat"})
        calls = len(gen.prompts)
        again = remote(server.url, **{"X-Thread-Id": "job-42"}).invoke({"prompt": "a red cat"})
    assert first["thread_id"] == again["thread_id"] == "job-42"
    assert again["final"] == first["final"] and len(gen.prompts) == calls


def test_api_key_is_required(served):
    server, _, _ = served()
    with server:
        missing = httpx.post(f"{server.url}/gems/invoke", json={"input": {"prompt": "a cat"}})
        assert missing.status_code == 401 and "Authorization: Bearer <key>" in missing.json()["detail"]
        wrong = httpx.post(f"{server.url}/gems/invoke", json={"input": {"prompt": "a cat"}}, headers={"X-API-Key": "x"})
        assert wrong.status_code == 401
        bearer = httpx.post(
            f"{server.url}/gems/invoke", json={"input": {"prompt": "a cat"}},
            headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
        )  # fmt: skip
        assert bearer.status_code == 200 and bearer.json()["output"]["success"] is True
        # Liveness only without a key; a key holder also learns the limits.
        assert httpx.get(f"{server.url}/health").json() == {"ok": True}
        assert httpx.get(f"{server.url}/health", headers={"X-API-Key": "x"}).json() == {"ok": True}
        health = httpx.get(f"{server.url}/health", headers={"X-API-Key": KEY})
        assert health.json() == {"ok": True, "auth": True, "max_concurrent": 2}


def test_several_keys_from_gems_api_keys(served, monkeypatch):
    from gems.configs import ConfigError
    from gems.interfaces.keys import api_keys_from_env

    monkeypatch.setenv("GEMS_API_KEYS", f"alice:{ALICE}, bob:{BOB}")
    assert api_keys_from_env() == {"alice": ALICE, "bob": BOB}
    server, _, _ = served(api_key=None)  # None: the keys come from the environment
    with server:
        for key, status in ((ALICE, 200), (BOB, 200), ("carol-key-0123456789", 401)):
            answer = httpx.get(f"{server.url}/gems/input_schema", headers={"X-API-Key": key})
            assert answer.status_code == status
        assert httpx.get(f"{server.url}/runs/nope/", headers={"X-API-Key": ALICE}).status_code == 404
    monkeypatch.setenv("GEMS_API_KEYS", "alice")
    with pytest.raises(ConfigError, match="name:key pairs"):
        api_keys_from_env()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": "a cat", "max_rounds": 99}, "max_rounds"),
        ({"prompt": "a cat", "colour": "red"}, "colour"),
    ],
)
def test_bad_requests_get_422_naming_the_field(served, payload, field):
    server, _, gen = served()
    with server:
        response = httpx.post(f"{server.url}/gems/invoke", json={"input": payload}, headers={"X-API-Key": KEY})
    assert response.status_code == 422
    assert field in response.text
    assert gen.prompts == []


def test_refine_mode_per_request_needs_an_editor_on_the_server(served):
    server, _, gen = served()
    with server:
        body = {"input": {"prompt": "a cat", "refine_mode": "edit"}}
        response = httpx.post(f"{server.url}/gems/invoke", json=body, headers={"X-API-Key": KEY})
        assert response.status_code == 422
        assert response.json()["detail"] == (
            "loop.refine_mode edit needs an editor: set editor.backend to diffusers, openai or generator "
            "in the server's config"
        )
        bad = httpx.post(f"{server.url}/gems/invoke", json={"input": {"prompt": "a cat", "refine_mode": "redo"}},
                         headers={"X-API-Key": KEY})  # fmt: skip
        assert bad.status_code == 422 and "refine_mode" in bad.text
        plain = {"input": {"prompt": "a cat", "refine_mode": "regenerate", "max_rounds": 1}}
        assert httpx.post(f"{server.url}/gems/invoke", json=plain, headers={"X-API-Key": KEY}).status_code == 200
    assert len(gen.prompts) == 1


def test_concurrency_cap_answers_429(served):
    server, _, gen = served(max_concurrent=1, queue_timeout_s=0.5, block_on_call=1)
    with server:
        first = threading.Thread(
            target=lambda: httpx.post(
                f"{server.url}/gems/invoke",
                json={"input": {"prompt": "a cat"}},
                headers={"X-API-Key": KEY},
                timeout=60,
            )
        )
        first.start()
        assert gen.blocked.wait(30)
        busy = httpx.post(f"{server.url}/gems/invoke", json={"input": {"prompt": "a dog"}}, headers={"X-API-Key": KEY})
        assert busy.status_code == 429 and busy.headers["retry-after"] == "5"
        assert httpx.get(f"{server.url}/health").status_code == 200  # not a run: not limited
        gen.release.set()
        first.join(60)
        ok = httpx.post(
            f"{server.url}/gems/invoke", json={"input": {"prompt": "a dog"}}, headers={"X-API-Key": KEY}, timeout=60
        )
        assert ok.status_code == 200


def test_a_batch_counts_each_input_against_the_cap_and_has_a_size_limit(served):
    server, _, gen = served(max_concurrent=2, queue_timeout_s=0.5, block_on_call=1)
    with server:
        batch = [{"prompt": f"a cat {i}"} for i in range(4)]
        # Two inputs take both slots (one blocks in the generator); the others wait 0.5 s, then the batch is 429.
        answer = httpx.post(f"{server.url}/gems/batch", json={"inputs": batch}, headers={"X-API-Key": KEY}, timeout=60)
        assert answer.status_code == 429
        gen.release.set()
        big = [{"prompt": "a cat"}] * 17
        answer = httpx.post(f"{server.url}/gems/batch", json={"inputs": big}, headers={"X-API-Key": KEY}, timeout=60)
        assert answer.status_code == 413 and "at most 16" in answer.json()["detail"]


def test_tenants_never_see_each_others_threads_or_lessons(mllm_server, gen_server, isolated_env, monkeypatch):
    from gems.interfaces.serve import create_app

    mllm, _ = mllm_server(criteria=CRITERIA, verdict=lambda q, n: "yes")
    settings = make_settings(mllm, gen_server(), isolated_env, memory={"lessons": True}, skills={"enabled": False})
    monkeypatch.setenv("GEMS_API_KEYS", f"alice:{ALICE},bob:{BOB}")
    with Served(create_app(settings)) as server:

        def run(key: str, prompt: str, thread: str) -> httpx.Response:
            headers = {"X-API-Key": key, "X-Thread-Id": thread}
            return httpx.post(f"{server.url}/gems/invoke", json={"input": {"prompt": prompt}}, headers=headers,
                              timeout=60)  # fmt: skip

        alice = run(ALICE, "alice secret: a portrait of my passport", "t1")
        assert alice.status_code == 200 and alice.json()["output"]["thread_id"] == "t1"
        # The same id from alice with another prompt: 409, never her earlier result.
        again = run(ALICE, "something else", "t1")
        assert again.status_code == 409 and "another prompt" in again.json()["detail"]
        # Bob's t1 is his own thread: his prompt runs, alice's is nowhere in his answer, and her lesson (a near
        # match for his prompt) stays in her tenant.
        bob = run(BOB, "alice secret: a portrait of my passport photo", "t1")
        assert bob.status_code == 200 and bob.json()["output"]["prompt"].endswith("passport photo")
        assert '"alice secret: a portrait of my passport"' not in bob.text
        assert bob.json()["output"]["lessons"] == []
        # A second run of alice's sees her lesson, without its prompt.
        mine = run(ALICE, "alice secret: a portrait of my passport again", "t2").json()["output"]
        assert mine["lessons"] and all(set(lesson) == {"id", "relevance"} for lesson in mine["lessons"])
        assert 'portrait of my passport"' not in json.dumps(mine["lessons"])
        page = httpx.get(f"{server.url}/runs/t2/", headers={"X-API-Key": BOB})
        assert page.status_code == 404  # bob has no t2


def test_artifact_names_cannot_escape(served):
    server, _, _ = served(api_key=None)
    with server:
        for name in ("..%2F..%2Fetc%2Fpasswd", "passwd.png", "0" * 64 + ".png", "%2e%2e%2fcheckpoints.sqlite"):
            assert httpx.get(f"{server.url}/artifacts/{name}").status_code == 404
        assert httpx.get(f"{server.url}/artifacts/../checkpoints.sqlite").status_code == 404


def test_gems_serve_command_starts(tmp_path):
    pytest.importorskip("langserve")
    port = free_port()
    env = {**os.environ, "GEMS_API_KEY": KEY, "GEMS_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gems.interfaces.cli", "serve", "--port", str(port)],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert wait_until_up(f"http://127.0.0.1:{port}/health", proc).json() == {"ok": True}
        schema = httpx.get(f"http://127.0.0.1:{port}/gems/input_schema", headers={"X-API-Key": KEY}).json()
        assert set(schema["properties"]) == {"prompt", "max_rounds", "seed", "refine_mode"}
        playground = httpx.get(f"http://127.0.0.1:{port}/gems/playground/", headers={"X-API-Key": KEY})
        assert playground.status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
