"""Run pages tell the truth: running ("running, round k", the only page that refreshes itself), waiting for review,
stopped with an error (its one line, how to resume), stopped, cancelled, finished.

`gems serve` over real HTTP here; the Agent Server's pages are tested in tests/test_chat.py against `langgraph dev`.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.support.servers import HTTPFailure, OpenAIStub, ScriptedMLLM

KEY = "s3cret-key-0123456789"
HEADERS = {"X-API-Key": KEY}
REFRESH = 'http-equiv="refresh"'
CRITERIA = ["Is there a cat?", "Is the cat red?"]
FAILING = "a cat the model cannot take"  # the MLLM answers 500 to anything about this request


def _served(gen: Any, data_dir: Any, **loop: Any) -> Any:
    pytest.importorskip("langserve")
    from gems.interfaces.serve import create_app
    from tests.test_serve import Served

    # Round 1 (the request as written) fails, round 2 (a refined prompt) passes.
    script = ScriptedMLLM(
        criteria=CRITERIA, verdict_by_image=lambda q, prompt: "yes" if (prompt or "").startswith("refined") else "no"
    )

    def chat(body: dict[str, Any]) -> Any:
        if FAILING in str(body):
            raise HTTPFailure(500, "the model server fell over")
        return script(body)

    mllm = OpenAIStub(chat=chat).start()
    settings = make_settings(mllm, gen, data_dir, skills={"top_k": 20}, loop=loop)
    return Served(create_app(settings, api_key=KEY)), mllm


def _invoke(url: str, thread: str, prompt: str) -> httpx.Response:
    return httpx.post(f"{url}/gems/invoke", json={"input": {"prompt": prompt}},
                      headers={**HEADERS, "X-Thread-Id": thread}, timeout=60)  # fmt: skip


def _says_running(page: str) -> bool:
    return re.search(r"<p>running[,:]", page) is not None


def _page(url: str, thread: str) -> str:
    page = httpx.get(f"{url}/runs/{thread}/", headers=HEADERS)
    assert page.status_code == 200
    return page.text


@pytest.mark.slow
def test_gems_serve_pages_say_running_round_k_failed_and_finished(gen_server, isolated_env):
    gen = gen_server(block_on_call=2)  # round 2's image waits until released
    server, mllm = _served(gen, isolated_env)
    try:
        with server:
            # A run whose MLLM answers 500: the request fails, and its page says so, once, without refreshing.
            assert _invoke(server.url, "failrun1", FAILING).status_code == 500
            failed = _page(server.url, "failrun1")
            assert REFRESH not in failed and not _says_running(failed)
            assert "stopped with an error: " in failed and "500" in failed
            assert "send the same request again with X-Thread-Id: failrun1" in failed
            assert "127.0.0.1" not in failed  # the error's line, without the server's endpoints

            # A run in its second round: "running, round 2", refreshing itself.
            answer: dict[str, Any] = {}
            worker = threading.Thread(target=lambda: answer.update(done=_invoke(server.url, "live1", "a red cat")))
            worker.start()
            try:
                assert gen.blocked.wait(30), "round 2's generation never started"
                live = _page(server.url, "live1")
                assert "running, round 2 (this page refreshes itself)" in live and REFRESH in live
            finally:
                gen.release.set()
                worker.join(60)
            assert answer["done"].status_code == 200
            done = _page(server.url, "live1")
            assert "all criteria passed: round 2 chosen" in done and REFRESH not in done
            assert not _says_running(done)
    finally:
        mllm.stop()


@pytest.mark.slow
def test_gems_serve_page_of_a_run_paused_for_review(gen_server, isolated_env):
    server, mllm = _served(gen_server(), isolated_env, human_review=True)
    try:
        with server:
            assert _invoke(server.url, "paused1", "a red cat").status_code == 200  # stops at the plan's review
            paused = _page(server.url, "paused1")
            assert REFRESH not in paused and not _says_running(paused)
            assert "waiting for review of the plan: the criteria and the first prompt" in paused
            # This server takes no answers, and says so rather than tell how to give one.
            assert "cannot take a review&#39;s answer" in paused and "Answer &#34;accept&#34;" not in paused
    finally:
        mllm.stop()


def _snapshot(values: dict[str, Any], next_: tuple[str, ...] = (), tasks: tuple[Any, ...] = ()) -> dict[str, Any]:
    return {"values": values, "next": list(next_), "tasks": list(tasks)}


def test_run_status_reads_the_checkpoint_and_what_the_server_knows():
    from gems.interfaces.pages import error_line, run_page, run_status

    hints = {"how_to_resume": "RESUME.", "how_to_answer": "ANSWER."}
    one_round = {"prompt": "p", "criteria": ["q"], "round": 1, "rounds": [{"round": 1, "passed": [], "failed": ["q"]}]}
    # In round 1's verification (generated, not yet ticked) the round in progress is 1; once ticked, 2.
    assert run_status(_snapshot({**one_round, "rounds": []}, ("verify",)), running=True, **hints).label == (
        "running, round 1"
    )
    assert run_status(_snapshot(one_round, ("refine",)), running=True, **hints).label == "running, round 2"
    # Round 1's image being made, on a new run or a follow-up turn (its earlier rounds cleared): round 1, not planning.
    fresh = {"prompt": "p", "criteria": ["q"], "round": 0, "rounds": []}
    assert run_status(_snapshot(fresh, ("generate",)), running=True, **hints).label == "running, round 1"
    assert run_status(_snapshot(one_round, ("generate",)), running=True, **hints).label == "running, round 2"
    assert run_status(_snapshot(fresh, ("planner", "decompose")), running=True, **hints).label == (
        "running: planning the first round"
    )
    assert run_status(_snapshot(one_round, ("finalize",)), running=True, **hints).label == "running: finishing"
    stopped = run_status(_snapshot(one_round, ("refine",)), running=False, **hints)
    assert (stopped.kind, stopped.refresh) == ("stopped", 0) and stopped.line.endswith("RESUME.")
    cancelled = run_status(_snapshot(one_round, ("refine",)), running=False, cancelled=True, **hints)
    assert cancelled.kind == "cancelled" and cancelled.label == "cancelled"
    error = "GeneratorError('generator server http://10.0.0.5:9000/generate answered HTTP 500: boom')"
    task = {"name": "generate", "interrupts": [], "error": error}
    failed = run_status(_snapshot(one_round, ("generate",), (task,)), running=False, **hints)
    assert failed.label == "stopped with an error: GeneratorError: generator server <endpoint> answered HTTP 500: boom"
    assert error_line(OSError("no file /srv/gems/data/x.png\nmore")) == "OSError: no file <path>"
    # Where the server's parts live never shows, however it is written.
    hidden = {
        "model at '/home/alice/My Models/qwen vl' failed": "model at '<path>' failed",
        r"cannot load C:\Users\alice\models\qwen: bad": "cannot load <path>: bad",
        r"share \\fileserver\models gone": "share <path> gone",
        "file:/srv/secret/dir and path:/srv/x": "<endpoint> and <endpoint>",
        "\x1b[31m/srv/secret/dir/file": "<path>",
        "cannot reach [fd00::5]:8000/v1, 10.1.2.3:8000/v1 or api.internal.corp:8000/v1": (
            "cannot reach <endpoint>, <endpoint> or <endpoint>"
        ),
        "cannot reach localhost:8000, gpubox:8000/v1 or gpu01.internal.corp/v1": (
            "cannot reach <endpoint>, <endpoint> or <endpoint>"
        ),
        "the generator bob:hunter2@gpubox/gen failed": "the generator <endpoint> failed",
        "HTTPConnectionPool(host='gpubox', port=8000)": "HTTPConnectionPool(host=<endpoint>, port=8000)",
        "'./models/qwen' and ~/models/x": "'<path>' and <path>",
    }
    # What is neither stays as written: hub ids, fractions, protocols, a fix naming /v1, times, versions.
    kept = [
        "(model Qwen/Qwen3-VL-8B-Instruct) answered 404; hf download Qwen/Qwen3-VL-8B-Instruct",
        "passed 3/5 and/or HTTP/1.1 w/h at 12:30:45",
        "mllm.base_url should end in /v1 (<title>503</title>), torch 2.13.0, Class::method, at::native::add c10::",
    ]
    hidden.update({text: text for text in kept})
    for text, shown in hidden.items():
        assert error_line(text) == shown, text
    assert error_line(r"GeneratorError('cannot load C:\\models\\x: bad')") == "GeneratorError: cannot load <path>: bad"
    told = run_status(_snapshot(one_round, ("x",)), running=False, error={"error": "E", "message": "m"}, **hints)
    assert told.label == "stopped with an error: E: m"  # the Agent Server's record of an error outside any task
    # A page written once (the CLI's index.html) never refreshes and never claims to be running.
    page = run_page({"prompt": "p", "criteria": ["q"], "rounds": []}, lambda image: "x.png")
    assert REFRESH not in page and not _says_running(page) and "not finished" in page
