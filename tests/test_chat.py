"""The Agent Server as chat clients see it (`langgraph dev`, driven with the real `langgraph_sdk`): messages in,
a message per round and an answer out, images by signed link from the same server, reviews, cancel, and owners.

One server for the module (two tenants, alice and bob), scripted models whose answers depend on the request and
the image, not on call order, so tests may share it.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.net import free_port, wait_until_up, write_stub_config
from tests.support.servers import GeneratorStub, OpenAIStub, ScriptedMLLM, png_bytes

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-01234567890"}
CRITERIA = ["Is there a cube?", "Is the cube red?"]
IMAGE = re.compile(r"!\[[^\]]*\]\((http://127\.0\.0\.1:\d+/artifacts/[0-9a-f]{64}\.png\?[^)\s]+)\)")
REQUEST = "a red cube on a wooden table"
REFRESH = 'http-equiv="refresh"'


def verdict(criterion: str, image_prompt: str | None) -> str:
    """Round 1 (the request as written) misses the colour; the refined prompt gets it."""
    if criterion == "Is the cube red?" and image_prompt == REQUEST:
        return "no"
    return "yes"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    langgraph = Path(sys.executable).with_name("langgraph")
    if not langgraph.exists():
        pytest.skip("langgraph-cli[inmem] is not installed (pip install -e '.[test]')")
    tmp = tmp_path_factory.mktemp("chat")
    script = ScriptedMLLM(criteria=CRITERIA, verdict_by_image=verdict,
                          follow_up=lambda body: "a blue cube on a wooden table")  # fmt: skip
    mllm = OpenAIStub(chat=script, watch_disconnects=True).start()
    gen = GeneratorStub().start()
    cfg = write_stub_config(tmp / "c.yaml", mllm.base_url, gen.url)
    work = tmp / "elsewhere"  # not the project folder: langgraph.json must work from anywhere
    work.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "GEMS_CONFIG": str(cfg),
        "GEMS_DATA_DIR": str(tmp / "data"),
        "GEMS_API_KEYS": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "true",
        "LANGSMITH_TRACING": "false",
    }
    log = open(tmp / "server.log", "w")  # noqa: SIM115 (closed after the server stops)
    proc = subprocess.Popen(
        [str(langgraph), "dev", "--config", str(ROOT / "langgraph.json"), "--no-browser", "--no-reload",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_up(f"{url}/ok", proc, timeout=120)
        except AssertionError as exc:
            pytest.fail(f"langgraph dev did not start ({exc}):\n{(tmp / 'server.log').read_text()[-3000:]}")
        yield {"url": url, "script": script, "gen": gen, "mllm": mllm, "tmp": tmp, "cfg": cfg}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        mllm.stop()
        gen.stop()


def client(server: dict[str, Any], who: str = "alice") -> Any:
    from langgraph_sdk import get_sync_client

    return get_sync_client(url=server["url"], api_key=None, headers={"X-API-Key": KEYS[who]})


def chat(c: Any, thread: str, text: str, **kwargs: Any) -> dict[str, Any]:
    c.runs.wait(thread, "gems", input={"messages": [{"type": "human", "content": text}]}, **kwargs)
    return c.threads.get_state(thread)["values"]


def status_of(error: Exception) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


# ---- chat in, chat out -----------------------------------------------------------------------------------------


def test_a_chat_message_gets_a_message_per_round_and_an_answer_with_images_from_the_same_server(server):
    alice = client(server)
    thread = alice.threads.create()["thread_id"]
    values = chat(alice, thread, REQUEST)
    messages = values["messages"]
    assert [m["type"] for m in messages] == ["human", "ai", "ai", "ai"]  # the request, 2 rounds, the answer
    assert messages[0]["content"] == REQUEST and values["prompt"] == REQUEST
    round1, round2, answer = (m["content"] for m in messages[1:])
    assert round1.startswith("**Round 1**: 1 of 2 criteria passed")
    assert "- ✓ Is there a cube?" in round1 and "- ✗ Is the cube red?" in round1
    assert "*Lesson:*" in round1 and "*Next prompt:* refined prompt 1" in round1  # completed when refined
    assert round2.startswith("**Round 2**: 2 of 2 criteria passed")
    assert answer.startswith("**Done**: all 2 criteria passed in round 2.") and "[the whole run](" in answer
    for text in (round1, round2, answer):
        (link,) = IMAGE.findall(text)
        image = httpx.get(link)  # what an <img> does: no key, only the link
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    # Only what a person should read: no planner prompt, no verifier answers, no skill names as chat.
    dumped = json.dumps(values)
    assert "Request:" not in json.dumps(messages) and '"NONE"' not in json.dumps(messages)
    assert "data:image" not in dumped and str(server["tmp"]) not in dumped  # references only, no server paths


def test_the_messages_stream_carries_only_what_a_person_reads(server):
    alice = client(server)
    thread = alice.threads.create()["thread_id"]
    chunks = list(
        alice.runs.stream(
            thread,
            "gems",
            input={"messages": [{"type": "human", "content": REQUEST}]},
            stream_mode=["messages-tuple", "custom"],
        )
    )
    said = [c.data[0] for c in chunks if c.event == "messages"]
    assert said and all(m["type"] == "ai" and m.get("name") == "gems" for m in said)
    assert {m["content"].split(":")[0] for m in said} >= {"**Round 1**", "**Done**"}
    events = [c.data for c in chunks if c.event == "custom"]
    assert [e["round"] for e in events if e["event"] == "image"] == [1, 2]
    rounds = [e for e in events if e["event"] == "round"]
    assert [(e["round"], e["passed"], e["total"]) for e in rounds] == [(1, 1, 2), (2, 2, 2)]
    assert httpx.get(rounds[0]["image_url"]).status_code == 200


def test_a_follow_up_continues_the_conversation(server):
    alice = client(server)
    thread = alice.threads.create()["thread_id"]
    chat(alice, thread, REQUEST)
    before = server["script"].calls["follow_up"]
    values = chat(alice, thread, "now make the cube blue")
    assert server["script"].calls["follow_up"] == before + 1
    asked = server["script"].bodies["follow_up"][-1]
    text = json.dumps(asked)
    assert "Earlier request: a red cube on a wooden table" in text and "New message: now make the cube blue" in text
    assert any(p.get("type") == "image_url" for m in asked["messages"] for p in m.get("content") or []
               if isinstance(p, dict))  # fmt: skip  # the earlier result, shown
    assert values["prompt"] == "a blue cube on a wooden table" and len(values["turns"]) == 1
    assert values["turns"][0]["request"] == REQUEST and values["rounds"][0]["round"] == 1  # a fresh run
    kinds = [(m["type"], m["content"] if m["type"] == "human" else "") for m in values["messages"]]
    assert kinds.count(("human", "now make the cube blue")) == 1 and kinds[-1][0] == "ai"


@pytest.mark.parametrize(
    "bad",
    [{}, {"messages": []}, {"prompt": ""}, {"prompt": 3}, {"messages": [{"type": "ai", "content": "hi"}]},
     {"prompt": "x", "options": {"max_rounds": 60}}],
    ids=["nothing", "no-messages", "empty-prompt", "not-text", "no-human", "options-past-cap"],
)  # fmt: skip
def test_an_input_without_a_request_gets_a_one_line_4xx(server, bad):
    alice = client(server)
    thread = alice.threads.create()["thread_id"]
    with pytest.raises(Exception) as info:
        alice.runs.create(thread, "gems", input=bad)
    assert status_of(info.value) == 422
    assert "\n" not in info.value.response.json()["detail"]


# ---- links -------------------------------------------------------------------------------------------------------


def test_image_and_page_links_are_capabilities_per_tenant(server):
    alice, bob = client(server), client(server, "bob")
    thread = alice.threads.create()["thread_id"]
    values = chat(alice, thread, REQUEST)
    answer = values["messages"][-1]["content"]
    (link,) = IMAGE.findall(answer)
    base = link.partition("?")[0]
    assert httpx.get(base).status_code == 403  # the bare path
    assert httpx.get(base, headers={"X-API-Key": KEYS["alice"]}).status_code == 403  # a key does not unlock images
    assert httpx.get(link.replace("&s=", "&s=x")).status_code == 403  # tampered
    assert httpx.get(link.replace("t=alice", "t=bob")).status_code == 403  # another tenant's
    page = re.search(r"\[the whole run\]\(([^)]+)\)", answer).group(1)
    shown = httpx.get(page)
    assert shown.status_code == 200 and REQUEST in shown.text and "all criteria passed" in shown.text
    assert str(server["tmp"]) not in shown.text
    sources = re.findall(r'<img src="([^"]+)"', shown.text)
    assert sources and all(httpx.get(src.replace("&amp;", "&")).status_code == 200 for src in sources)
    page_path = page.split("?")[0]
    assert httpx.get(page_path).status_code == 403
    assert httpx.get(page_path, headers={"X-API-Key": KEYS["alice"]}).status_code == 200
    assert httpx.get(page_path, headers={"X-API-Key": KEYS["bob"]}).status_code == 404  # not bob's run
    listing = httpx.get(f"{server['url']}/runs/", headers={"X-API-Key": KEYS["alice"]})
    assert listing.status_code == 200 and REQUEST in listing.text
    assert REQUEST not in httpx.get(f"{server['url']}/runs/", headers={"X-API-Key": KEYS["bob"]}).text
    assert bob.threads.search() == [] or thread not in [t["thread_id"] for t in bob.threads.search()]


# ---- reviews -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer", [{}, None, "", {"decisions": [{"type": "approve"}]}, [{"type": "accept", "args": None}]],
    ids=["empty-object", "null", "empty-string", "hitl-approve", "inbox-accept"],
)  # fmt: skip
def test_the_plan_review_is_accepted_however_a_client_says_yes(server, answer):
    alice = client(server)
    thread = alice.threads.create()["thread_id"]
    chat(alice, thread, REQUEST, context={"loop": {"human_review": True}})
    state = alice.threads.get_state(thread)
    assert state["next"] == ["review"]
    value = state["tasks"][0]["interrupts"][0]["value"]
    assert value["action_requests"][0]["name"] == "review_plan" and value["criteria"] == CRITERIA  # a review card
    alice.runs.wait(thread, "gems", command={"resume": answer})
    done = alice.threads.get_state(thread)
    assert done["next"] == [] and done["values"]["success"] is True


def test_a_round_review_can_take_that_rounds_image(server):
    alice = client(server)
    thread = alice.threads.create()["thread_id"]
    chat(alice, thread, REQUEST, context={"loop": {"review_rounds": True}})
    state = alice.threads.get_state(thread)
    assert state["next"] == ["review_round"]
    value = state["tasks"][0]["interrupts"][0]["value"]
    assert value["round"] == 1 and value["failed"] == ["Is the cube red?"]
    assert httpx.get(value["image_url"]).status_code == 200
    alice.runs.wait(thread, "gems", command={"resume": {"accept": True}})
    values = alice.threads.get_state(thread)["values"]
    assert values["final"]["round"] == 1 and values["final"]["accepted"] is True and len(values["rounds"]) == 1


# ---- cancel ------------------------------------------------------------------------------------------------------


def test_cancelling_a_run_closes_the_call_in_flight_and_the_thread_resumes(server):
    alice = client(server)
    thread = alice.threads.create()["thread_id"]
    script = server["script"]
    with script.holding("decompose"):  # the decomposer's call is held open
        run = alice.runs.create(thread, "gems", input={"messages": [{"type": "human", "content": REQUEST}]})
        assert script.blocked.wait(60), "the decomposer's call never arrived"
        before = len(server["mllm"].disconnects)
        asked = time.monotonic()
        alice.runs.cancel(thread, run["run_id"], wait=True)
        deadline = asked + 30
        while len(server["mllm"].disconnects) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(server["mllm"].disconnects) > before, "the call in flight was not closed"
        print(f"the call in flight closed {server['mllm'].disconnects[-1] - asked:.2f}s after the cancel")
    state = alice.threads.get_state(thread)
    assert state["next"]  # resumable from its last checkpoint
    page = httpx.get(f"{server['url']}/runs/{thread}/", headers={"X-API-Key": KEYS["alice"]}).text
    assert "<p>cancelled before finishing. To resume it" in page and REFRESH not in page  # and it says so
    alice.runs.wait(thread, "gems", input=None)
    assert alice.threads.get_state(thread)["values"]["success"] is True


# ---- run pages tell the truth -------------------------------------------------------------------------------------


def _rows(listing: str) -> dict[str, str]:
    """The runs list as {thread id: status}."""
    return dict(re.findall(r'<a href="[^"]*/runs/([^/"]+)/[^"]*">[^<]*</a></td><td class=\w+>([^<]*)</td>', listing))


def test_run_pages_and_the_runs_list_say_where_each_run_stands(server):
    alice, url, key = client(server), server["url"], {"X-API-Key": KEYS["alice"]}
    gen, script = server["gen"], server["script"]
    failed, paused, live = (alice.threads.create()["thread_id"] for _ in range(3))
    gen.fail_first = len(gen.prompts) + 50  # the generator answers 500: the run stops with its error
    try:
        with contextlib.suppress(Exception):
            alice.runs.wait(failed, "gems", input={"prompt": REQUEST})
    finally:
        gen.fail_first = 0
    chat(alice, paused, REQUEST, context={"loop": {"human_review": True}})  # stops at the plan's review
    with script.holding("refine"):  # round 1 is done, round 2's prompt is being written
        run = alice.runs.create(live, "gems", input={"prompt": REQUEST})
        assert script.blocked.wait(60), "the refiner's call never arrived"
        pages = {thread: httpx.get(f"{url}/runs/{thread}/", headers=key).text for thread in (failed, paused, live)}
        listed = _rows(httpx.get(f"{url}/runs/", headers=key).text)
    alice.runs.join(live, run["run_id"])

    assert "<p>running, round 2 (this page refreshes itself)</p>" in pages[live] and REFRESH in pages[live]
    assert REFRESH not in pages[failed] and REFRESH not in pages[paused]
    stopped = "stopped with an error: GeneratorError: generator server <endpoint> answered HTTP 500: model exploded"
    resume = "To resume it from its last checkpoint, start a run on this thread with no input"
    assert f"<p>{html.escape(stopped)}. {resume}" in pages[failed]
    assert "<p>waiting for review of the plan: the criteria and the first prompt" in pages[paused]
    assert "Answer &#34;accept&#34; to go on" in pages[paused] and "{&#34;resume&#34;: &lt;answer&gt;}" in pages[paused]
    assert listed[live] == "running, round 2" and listed[paused] == "waiting for review"
    assert html.unescape(listed[failed]) == stopped
    assert not any(status.startswith("running") for thread, status in listed.items() if thread != live)
    # What the failed run's page says to do works.
    alice.runs.wait(failed, "gems", input=None)
    done = httpx.get(f"{url}/runs/{failed}/", headers=key).text
    assert "all criteria passed" in done and REFRESH not in done
    assert _rows(httpx.get(f"{url}/runs/", headers=key).text)[failed] == "all criteria passed"


# ---- owners (Hardening II) ----------------------------------------------------------------------------------------


def test_studios_auth_scheme_does_not_skip_the_key(server):
    """Under langgraph dev, `x-auth-scheme: langsmith` would make anyone LangGraph Studio's user, without a key; the
    auth config turns that off (disable_studio_auth), so every request goes through the keys."""
    for path, body in (("/threads", {}), ("/threads/search", {}), ("/store/namespaces", {})):
        answer = httpx.post(f"{server['url']}{path}", json=body, headers={"x-auth-scheme": "langsmith"})
        assert answer.status_code == 401, (path, answer.status_code)


def test_the_store_is_each_tenants_own(server):
    alice, bob = client(server), client(server, "bob")
    alice.store.put_item(["gems", "tenants", "alice", "notes"], "n1", {"prompt": "alice's secret"})
    assert alice.store.search_items(["gems", "tenants", "alice"])["items"]
    for attempt in (
        lambda: bob.store.search_items(["gems", "tenants", "alice"]),
        lambda: bob.store.get_item(["gems", "tenants", "alice", "notes"], "n1"),
        lambda: bob.store.put_item(["gems", "tenants", "alice", "lessons"], "x", {"prompt": "planted"}),
        lambda: bob.store.delete_item(["gems", "tenants", "alice", "notes"], "n1"),
        lambda: bob.store.search_items(["gems", "lessons"]),
    ):
        with pytest.raises(Exception) as info:
            attempt()
        assert status_of(info.value) == 403
    bob.store.put_item(["gems", "tenants", "bob", "notes"], "n1", {"prompt": "bob's"})
    listed = bob.store.list_namespaces(prefix=["gems"])["namespaces"]
    assert listed and all(ns[:3] == ["gems", "tenants", "bob"] for ns in listed)
    assert alice.store.get_item(["gems", "tenants", "alice", "notes"], "n1")["value"]["prompt"] == "alice's secret"


def test_crons_and_assistants_have_owners(server):
    alice, bob = client(server), client(server, "bob")
    thread = alice.threads.create()["thread_id"]
    once_a_year = "0 0 1 1 *"
    with pytest.raises(Exception) as info:
        alice.crons.create_for_thread(thread, "gems", schedule=once_a_year, input={"prompt": "x"},
                                      context={"mllm": {"base_url": "http://10.0.0.1/v1"}})  # fmt: skip
    assert status_of(info.value) == 422
    cron = alice.crons.create_for_thread(thread, "gems", schedule=once_a_year, input={"prompt": "a red cube"})
    assert [c["cron_id"] for c in alice.crons.search()] == [cron["cron_id"]]
    assert bob.crons.search() == []
    with pytest.raises(Exception) as info:
        bob.crons.delete(cron["cron_id"])
    assert status_of(info.value) in (403, 404)
    alice.crons.delete(cron["cron_id"])
    assert alice.crons.search() == []

    mine = alice.assistants.create("gems", context={"loop": {"max_rounds": 2}}, name="alice's")
    assert mine["assistant_id"] not in [a["assistant_id"] for a in bob.assistants.search()]
    for attempt in (lambda: bob.assistants.update(mine["assistant_id"], context={"loop": {"max_rounds": 1}}),
                    lambda: bob.assistants.delete(mine["assistant_id"])):  # fmt: skip
        with pytest.raises(Exception) as info:
            attempt()
        assert status_of(info.value) in (403, 404)
    assert alice.assistants.get(mine["assistant_id"])["context"] == {"loop": {"max_rounds": 2}}

    given = bob.threads.create(metadata={"owner": "alice"})  # an owner cannot be given away
    assert given["metadata"]["owner"] == "bob"
    with pytest.raises(Exception) as info:
        bob.threads.update(given["thread_id"], metadata={"owner": "alice"})
    assert status_of(info.value) == 403


def test_one_run_per_thread_at_a_time(server):
    alice = client(server)
    thread = alice.threads.create()["thread_id"]
    script = server["script"]
    with script.holding("decompose"):
        alice.runs.create(thread, "gems", input={"prompt": REQUEST})
        assert script.blocked.wait(60)
        with pytest.raises(Exception) as info:
            alice.runs.create(thread, "gems", input={"prompt": REQUEST})
        assert status_of(info.value) == 409
    alice.runs.join(thread, alice.runs.list(thread)[0]["run_id"])


def test_a_run_page_shows_a_run_in_progress_and_bodies_are_bounded(server):
    alice = client(server)
    thread = alice.threads.create()["thread_id"]
    script = server["script"]
    key = {"X-API-Key": KEYS["alice"]}
    with script.holding("decompose"):
        run = alice.runs.create(thread, "gems", input={"prompt": REQUEST})
        assert script.blocked.wait(60)
        page = httpx.get(f"{server['url']}/runs/{thread}/", headers=key)
        assert page.status_code == 200 and REFRESH in page.text
        assert "<p>running: planning the first round (this page refreshes itself)</p>" in page.text
    alice.runs.join(thread, run["run_id"])
    done = httpx.get(f"{server['url']}/runs/{thread}/", headers=key).text
    assert "all criteria passed" in done and 'http-equiv="refresh"' not in done
    flood = httpx.post(
        f"{server['url']}/threads", content=b"x" * 21_000_000, headers={**key, "content-type": "application/json"}
    )
    assert flood.status_code == 413 and "larger than" in flood.json()["detail"]


# ---- in a real chat UI -------------------------------------------------------------------------------------------

ARTIFACTS = ROOT / "test-artifacts"
STALE_STYLESHEET = "/src/styles.css"  # the npm template's index.html links a file its build does not make


def _ui_flavours() -> list[Any]:
    """npm's create-agent-chat-app (buildable from the npm registry alone) always; the GitHub UI when its source or
    a build of it is here (it needs GitHub to build from scratch)."""
    from tests.support.chat_ui import SOURCE_ENV, default_cache

    flavours: list[Any] = ["npm"]
    cached = any(default_cache().glob("agent-chat-ui-github-*/site"))
    flavours.append(pytest.param("github", marks=[] if cached or os.environ.get(SOURCE_ENV) else pytest.mark.skip(
        reason=f"the GitHub Agent Chat UI needs its source (${SOURCE_ENV}) or a cached build")))  # fmt: skip
    return flavours


@pytest.fixture(scope="module")
def browser_context():
    """Headless system Chromium (no browser download), as CI installs it."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists() or shutil.which("npm") is None:
        if os.environ.get("GEMS_REQUIRE_BROWSER"):
            pytest.fail("GEMS_REQUIRE_BROWSER is set but chromium or npm is missing")
        pytest.skip("needs the system chromium and npm (the UI is built from the npm registry)")
    from playwright.sync_api import sync_playwright

    from tests.support.chat_ui import CHROMIUM_ARGS

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="gems-chromium-"), executable_path=chromium, headless=True,
            args=[a for a in CHROMIUM_ARGS if a != "--headless"], viewport={"width": 1280, "height": 1600},
        )  # fmt: skip
        try:
            yield context
        finally:
            context.close()


@contextlib.contextmanager
def _shot_on_failure(page: Any, name: str, problems: list[str]) -> Any:
    """A screenshot, and what the browser said, when a step fails: the artifact to look at."""
    try:
        yield
    except Exception as exc:
        page.screenshot(path=str(ARTIFACTS / name), full_page=True)
        exc.add_note("browser: " + "; ".join(problems[-10:]))
        raise


@pytest.mark.timeout(1200)  # the first time, the UI is built from the npm registry (about 3 minutes on 2 cores)
@pytest.mark.parametrize("flavour", _ui_flavours())
def test_agent_chat_ui_shows_each_round_and_the_answer_and_takes_a_review(server, browser_context, flavour):
    from tests.support.chat_ui import build_chat_ui, chat_ui, chat_ui_url

    site = build_chat_ui(flavor=flavour)  # minutes the first time (npm install + build), then cached
    alice = client(server)
    # An assistant that asks for the review, so the UI's interrupt view comes up on the typed request.
    reviewed = alice.assistants.create("gems", context={"loop": {"human_review": True}}, name="reviewed")
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    page = browser_context.new_page()
    # A failed load shows as a console error without its URL: failed responses are checked by URL instead.
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)  # fmt: skip
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}")
            if r.status >= 400 and not r.url.endswith(STALE_STYLESHEET) else None)  # fmt: skip
    page.on("request", lambda r: problems.append(f"off-host: {r.url}")
            if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None)  # fmt: skip
    page.add_init_script(f"localStorage.setItem('lg:chat:apiKey', {json.dumps(KEYS['alice'])})")
    with chat_ui(site, free_port()) as base, _shot_on_failure(page, f"chat-ui-{flavour}-failed.png", problems):
        # A typed request: each round's image as it is made, then the answer.
        page.goto(chat_ui_url(base, server["url"], "gems"))
        box = page.locator("textarea").first
        box.wait_for(timeout=60_000)
        box.fill(REQUEST)
        box.press("Enter")
        page.get_by_text("Done", exact=False).first.wait_for(timeout=90_000)
        page.wait_for_timeout(1000)
        shown = page.evaluate(
            "() => [...document.querySelectorAll('img')].filter(i => i.src.includes('/artifacts/'))"
            ".map(i => ({alt: i.alt, width: i.naturalWidth}))"
        )
        assert [i["alt"] for i in shown] == ["Round 1", "Round 2", "Final image"], shown
        assert all(i["width"] > 0 for i in shown), shown  # each image loaded from the Agent Server, no key sent
        assert page.get_by_text("Is the cube red?").count() >= 2
        page.screenshot(path=str(ARTIFACTS / f"chat-ui-{flavour}-1-answer.png"), full_page=True)

        # The plan review, accepted from the UI's interrupt view.
        page.goto(chat_ui_url(base, server["url"], reviewed["assistant_id"]))
        box = page.locator("textarea").first
        box.wait_for(timeout=60_000)
        box.fill("a green cone")
        box.press("Enter")
        accept = page.get_by_role("button", name="Approve" if flavour == "github" else "Accept").first
        accept.wait_for(timeout=90_000)
        page.screenshot(path=str(ARTIFACTS / f"chat-ui-{flavour}-2-review.png"), full_page=True)
        accept.click()
        page.get_by_text("Done", exact=False).first.wait_for(timeout=90_000)
        page.screenshot(path=str(ARTIFACTS / f"chat-ui-{flavour}-3-accepted.png"), full_page=True)
    page.close()
    assert problems == [], problems


def test_state_edits_hold_only_review_answers_and_stay_within_limits(server):
    """A client may write a review's answers into its thread's state, nothing of the server's (owner, rounds,
    images, options); criteria it writes are checked only up to the cap (100) however many it sends."""
    alice = client(server)
    thread = alice.threads.create()["thread_id"]
    chat(alice, thread, REQUEST, context={"loop": {"human_review": True, "max_rounds": 1}})
    for values in ({"images_per_round": 10_000}, {"max_rounds": 60}, {"round": -10_000}, {"owner": "bob"},
                   {"final": {"round": 1, "image": {"sha256": "0" * 64}}}, {"rounds": []}):  # fmt: skip
        with pytest.raises(Exception) as info:
            alice.threads.update_state(thread, values, as_node="decompose")
        assert status_of(info.value) == 403 and "the server's" in info.value.response.json()["detail"]
    with pytest.raises(Exception) as info:  # the same through a run's command
        alice.runs.wait(thread, "gems", command={"resume": "accept", "update": {"owner": "bob"}})
    assert status_of(info.value) == 403
    many = [f"Is there thing {i}?" for i in range(500)]
    alice.threads.update_state(thread, {"criteria": many}, as_node="decompose")
    asked = server["script"].calls["verify"]
    alice.runs.wait(thread, "gems", command={"resume": "accept"})
    values = alice.threads.get_state(thread)["values"]
    assert len(values["rounds"]) == 1 and server["script"].calls["verify"] - asked == 100


def test_attachments_never_reach_state_or_history_as_base64(server):
    """However a client attaches an image, the run's input holds a signed link by the time the run starts."""
    alice = client(server)
    b64 = base64.b64encode(png_bytes((200, 30, 30), size=24)).decode()
    shapes = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
        {"type": "image", "data": b64, "mimeType": "image/png"},
        {"type": "image", "base64": b64, "mime_type": "image/png"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}},
        {"type": "image_url", "image_url": {"url": f"DATA:image/png;name=a.png;base64,{b64}"}},
    ]
    for shape in shapes:
        thread = alice.threads.create()["thread_id"]
        content = [{"type": "text", "text": REQUEST}, shape]
        alice.runs.wait(thread, "gems", input={"messages": [{"type": "human", "content": content}]},
                        context={"loop": {"max_rounds": 1}})  # fmt: skip
        everything = json.dumps(alice.threads.get_history(thread, limit=100))
        assert b64[:40] not in everything and "base64" not in everything, shape
        values = alice.threads.get_state(thread)["values"]
        assert len(values["references"]) == 1
        (shown,) = [p for p in values["messages"][0]["content"] if p["type"] == "image_url"]
        assert httpx.get(shown["image_url"]["url"]).content.startswith(b"\x89PNG")
    thread = alice.threads.create()["thread_id"]
    for bad in ({"type": "file", "mimeType": "application/pdf", "data": b64},
                {"type": "image_url", "image_url": {"url": f"data:text/plain;base64,{b64}"}}):  # fmt: skip
        with pytest.raises(Exception) as info:
            alice.runs.create(thread, "gems", input={"messages": [{"type": "human", "content": [
                {"type": "text", "text": REQUEST}, bad]}]})  # fmt: skip
        assert status_of(info.value) == 422 and "only images" in info.value.response.json()["detail"]
    with pytest.raises(Exception) as info:  # an image and no words: nothing to do
        alice.runs.create(thread, "gems", input={"messages": [{"type": "human", "content": [shapes[0]]}]})
    assert status_of(info.value) == 422


def test_the_planners_conversation_never_streams_even_from_subgraphs(server):
    alice = client(server)
    thread = alice.threads.create()["thread_id"]
    request = {"messages": [{"type": "human", "content": REQUEST}]}
    for mode in ("messages-tuple", "messages"):
        chunks = list(alice.runs.stream(thread, "gems", input=request, stream_mode=mode, stream_subgraphs=True))
        said = json.dumps([c.data for c in chunks if c.event.startswith("messages")])
        assert "Candidate skills" not in said and "Request:" not in said and "load_skill" not in said, mode
    values = alice.threads.get_state(thread)["values"]
    assert "planner_messages" not in values


def test_cron_changes_and_server_assistants_are_checked(server):
    alice = client(server)
    thread = alice.threads.create()["thread_id"]
    cron = alice.crons.create_for_thread(thread, "gems", schedule="0 0 1 1 *", input={"prompt": "a red cube"})
    for change in ({"context": {"mllm": {"base_url": "http://10.0.0.1/v1"}}}, {"input": {"nothing": 1}}):
        answer = httpx.patch(f"{server['url']}/runs/crons/{cron['cron_id']}", json=change,
                             headers={"X-API-Key": KEYS["alice"]})  # fmt: skip
        assert answer.status_code == 422, answer.text
    alice.crons.delete(cron["cron_id"])
    posed = alice.assistants.create("gems", metadata={"created_by": "system"}, name="pretender")
    assert posed["metadata"].get("created_by") != "system" and posed["metadata"]["owner"] == "alice"
    listed = client(server, "bob").assistants.search(metadata={"created_by": "system"})
    assert posed["assistant_id"] not in [a["assistant_id"] for a in listed]


def test_the_agent_server_refuses_to_start_with_a_short_key(tmp_path):
    """Keys short enough to guess stop the server at start-up, in one line naming the rule (never the key)."""
    env = {**os.environ, "GEMS_API_KEYS": "alice:short", "GEMS_DATA_DIR": str(tmp_path)}
    code = "import gems.interfaces.agent_auth"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "API keys must be at least 16 characters; the GEMS_API_KEYS entry 'alice' has 5" in last
    assert "short" not in last  # the key itself is never printed
