"""`gems serve` against hostile clients: each hardening rule refuses what it should, and what it allows still works."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gems.configs import ConfigError, GemsSettings
from tests.conftest import make_settings
from tests.test_serve import ALICE, BOB, CRITERIA, KEY, Served

pytestmark = pytest.mark.slow
OWN = {"Origin": "http://testserver"}  # what a browser on the TestClient's own origin sends


@pytest.fixture
def app_for(tmp_path):
    pytest.importorskip("langserve")
    from gems.interfaces.serve import create_app

    def make(**options):
        return create_app(GemsSettings(data_dir=tmp_path / "data"), **options)

    return make


def test_short_keys_are_refused_at_start_up(app_for, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="at least 16 characters; GEMS_API_KEY has 5"):
        app_for(api_key="short")
    monkeypatch.setenv("GEMS_API_KEYS", f"alice:{ALICE},bob:tiny-key")
    with pytest.raises(ConfigError, match="GEMS_API_KEYS entry 'bob' has 8") as refused:
        app_for()
    assert "tiny-key" not in str(refused.value)

    from gems.interfaces.cli import main

    monkeypatch.delenv("GEMS_API_KEYS")
    monkeypatch.setenv("GEMS_API_KEY", "0123456789abcde")
    assert main(["serve", "--port", "1"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "API keys must be at least 16 characters" in line and "0123456789abcde" not in line


class Body:
    """An ASGI `receive` that offers `total` bytes in 64 KiB chunks and counts how many were taken."""

    CHUNK = b"k" * 65536

    def __init__(self, total: int):
        self.left, self.taken = total, 0

    async def __call__(self) -> dict:
        self.taken += 1
        self.left -= len(self.CHUNK)
        return {"type": "http.request", "body": self.CHUNK, "more_body": self.left > 0}


def _asgi(app, path: str, receive, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """One request straight into the ASGI app: (status, body)."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"testserver"), (b"origin", b"http://testserver"), *headers],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80), "scheme": "http", "http_version": "1.1",
             "asgi": {"version": "3.0"}}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize(("path", "limit"), [("/signin", 4096), ("/gems/invoke", 1_000_000)])
def test_a_body_is_cut_off_at_its_limit_while_it_arrives(app_for, path, limit):
    # 100 MB with no Content-Length: the answer comes once the limit is passed, the rest is never read.
    body = Body(100_000_000)
    status, answer = _asgi(app_for(api_key=KEY), path, body, [(b"x-api-key", KEY.encode())])
    assert status == 413 and b"larger than" in answer and b"\n" not in answer
    assert body.taken <= limit // len(Body.CHUNK) + 1


def test_a_declared_600_mb_body_is_refused_before_it_is_sent(app_for):
    with Served(app_for(api_key=KEY)) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(30)  # a hang guard only: without the check the server waits for 600 MB that never come
        sock.sendall(b"POST /signin HTTP/1.1\r\nHost: x\r\nOrigin: http://x\r\nContent-Length: 600000000\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n\r\nkey=")  # fmt: skip
        assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")


def test_a_body_that_never_finishes_gets_408():
    from gems.interfaces.serve import _Guard

    async def never() -> dict:
        await asyncio.Event().wait()
        return {}

    async def app(scope, receive, send):  # pragma: no cover - the guard answers first
        raise AssertionError("the body was never complete")

    status, answer = _asgi(_Guard(app, keys={}, body_timeout_s=0.05), "/gems/invoke", never, [])
    assert status == 408 and b"not received within" in answer


def _client(app, **options):
    from fastapi.testclient import TestClient

    return TestClient(app, raise_server_exceptions=False, **options)


def test_sign_in_is_limited_per_client_and_a_right_key_works_after_the_window(app_for):
    app = app_for(api_key=KEY)
    limiter = app.state.signin_limiter
    now = [1000.0]
    limiter.clock = lambda: now[0]
    with _client(app) as client, _client(app, client=("10.0.0.2", 4000)) as neighbour:
        answers = [client.post("/signin", data={"key": f"guess-{i:012d}"}, headers=OWN) for i in range(20)]
        # 5 wrong keys are checked; the next 15 are not, so guessing goes at 5 a minute at most.
        assert [a.status_code for a in answers] == [401] * 5 + [429] * 15
        assert answers[-1].headers["retry-after"] == "60" and KEY not in answers[-1].text
        # While it waits, the right key is refused too (else the 429 would tell which key is right), in a form or
        # in a header; another client is not affected.
        assert client.post("/signin", data={"key": KEY}, headers=OWN, follow_redirects=False).status_code == 429
        assert client.get("/gems/input_schema", headers={"X-API-Key": KEY}).status_code == 429
        assert neighbour.get("/gems/input_schema", headers={"X-API-Key": KEY}).status_code == 200
        now[0] += 30
        assert client.post("/signin", data={"key": KEY}, headers=OWN).headers["retry-after"] == "30"
        now[0] += 31
        signed_in = client.post("/signin", data={"key": KEY}, headers=OWN, follow_redirects=False)
        assert signed_in.status_code == 303 and "gems_session" in signed_in.headers["set-cookie"]
        # Wrong keys in headers count the same way.
        for _ in range(5):
            assert neighbour.get("/gems/input_schema", headers={"X-API-Key": "x" * 20}).status_code == 401
        assert neighbour.get("/gems/input_schema", headers={"X-API-Key": KEY}).status_code == 429


def test_cross_site_posts_are_refused_and_header_keys_need_no_origin(app_for):
    with _client(app_for(api_key=KEY)) as client:
        # Login CSRF: another site (or another port of this one) cannot sign a browser in.
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "http://testserver:8080"},
                        {"Sec-Fetch-Site": "same-site"}, {}):  # fmt: skip
            refused = client.post("/signin", data={"key": KEY}, headers=headers, follow_redirects=False)
            assert refused.status_code == 403 and "set-cookie" not in refused.headers and KEY not in refused.text
        client.post("/signin", data={"key": KEY}, headers={**OWN, "Sec-Fetch-Site": "same-origin"})
        assert client.cookies.get("gems_session")
        # With the cookie: a page elsewhere posting text/plain JSON, or posting without an Origin, is refused.
        bad = '{"input": {"prompt": ""}}'  # reaching the run's validation (422) means the guard let it through
        for headers, status in (
            ({"Origin": "http://testserver:8080", "Content-Type": "text/plain"}, 403),
            ({"Origin": "http://evil.example", "Content-Type": "application/json"}, 403),
            ({"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, 403),
            ({"Content-Type": "application/json"}, 403),
            ({**OWN, "Content-Type": "text/plain"}, 415),
            ({**OWN, "Content-Type": "application/x-www-form-urlencoded"}, 415),
            ({**OWN, "Content-Type": "application/json; charset=utf-8"}, 422),
        ):
            answer = client.post("/gems/invoke", content=bad, headers=headers)
            assert answer.status_code == status, headers
            assert answer.text.count("\n") == 0 and len(answer.text) < 300
    with _client(app_for(api_key=KEY)) as program:  # no cookie: a header key, no Origin, any content type
        answer = program.post("/gems/invoke", content=bad, headers={"X-API-Key": KEY, "Content-Type": "text/plain"})
        assert answer.status_code == 422
    with _client(app_for(api_key="")) as local:  # no keys: programs post freely, other sites' pages do not
        assert local.post("/gems/invoke", content=bad, headers={"Content-Type": "application/json"}).status_code == 422
        foreign = local.post("/gems/invoke", content=bad, headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403


def test_health_is_liveness_only_without_a_key(app_for):
    with _client(app_for(api_key="")) as client:
        assert client.get("/health").json() == {"ok": True}


@pytest.fixture
def tenants(mllm_server, gen_server, isolated_env, monkeypatch):
    """Settings for the stub servers and `GEMS_API_KEYS` for alice and bob; `script` blocks where asked."""
    pytest.importorskip("langserve")

    def start(**script):
        mllm, scripted = mllm_server(criteria=CRITERIA, verdict=lambda q, n: "yes", **script)
        gen = gen_server()
        monkeypatch.setenv("GEMS_API_KEYS", f"alice:{ALICE},bob:{BOB}")
        return make_settings(mllm, gen, isolated_env, skills={"enabled": False}), scripted, gen

    return start


def _invoke(url: str, key: str, prompt: str = "a red cat", thread: str | None = None) -> httpx.Response:
    headers = {"X-API-Key": key, **({"X-Thread-Id": thread} if thread else {})}
    return httpx.post(f"{url}/gems/invoke", json={"input": {"prompt": prompt}}, headers=headers, timeout=60)


def _stream(url: str, key: str, prompt: str, thread: str | None = None):
    from langserve import RemoteRunnable

    headers = {"X-API-Key": key, **({"X-Thread-Id": thread} if thread else {})}
    return RemoteRunnable(f"{url}/gems", headers=headers).stream({"prompt": prompt})


def test_artifacts_are_served_only_to_the_tenant_whose_run_made_them(tenants):
    from gems.interfaces.serve import create_app

    settings, _, _ = tenants()
    with Served(create_app(settings)) as server:
        url = _invoke(server.url, ALICE).json()["output"]["final"]["image"]["url"]
        assert httpx.get(server.url + url, headers={"X-API-Key": ALICE}).status_code == 200
        refused = httpx.get(server.url + url, headers={"X-API-Key": BOB})
        assert refused.status_code == 404 and refused.json() == {"detail": "no such artifact"}
        chunks = list(_stream(server.url, BOB, "a blue cat"))
        streamed = next(c for c in chunks if c["node"] == "generate")["update"]["candidates"][0]["url"]
        assert httpx.get(server.url + streamed, headers={"X-API-Key": BOB}).status_code == 200
        assert httpx.get(server.url + streamed, headers={"X-API-Key": ALICE}).status_code == 404
    with Served(create_app(settings)) as restarted:  # the record outlives the process
        assert httpx.get(restarted.url + url, headers={"X-API-Key": ALICE}).status_code == 200
        assert httpx.get(restarted.url + url, headers={"X-API-Key": BOB}).status_code == 404


def test_a_busy_thread_gets_409_and_never_a_second_run(tenants):
    from gems.interfaces.serve import create_app

    settings, script, gen = tenants(block_at=("decompose", 1))
    with Served(create_app(settings)) as server, ThreadPoolExecutor(4) as pool:
        first = pool.submit(_invoke, server.url, ALICE, "a red cat", "job-1")
        assert script.blocked.wait(30)  # the first run holds its thread, stopped before any image
        others = list(pool.map(lambda _: _invoke(server.url, ALICE, "a red cat", "job-1"), range(3)))
        assert [o.status_code for o in others] == [409] * 3
        assert "running for another request" in others[0].json()["detail"] and "\n" not in others[0].text
        stream = httpx.post(f"{server.url}/gems/stream", json={"input": {"prompt": "a red cat"}},
                            headers={"X-API-Key": ALICE, "X-Thread-Id": "job-1"})  # fmt: skip
        assert stream.status_code == 409  # a status, not a stream that fails later
        # Bob's job-1 is another thread: not busy.
        assert _invoke(server.url, BOB, "a red cat", "job-1").status_code == 200
        script.release.set()
        done = first.result(60)
        assert done.status_code == 200 and len(done.json()["output"]["rounds"]) == 1
        again = _invoke(server.url, ALICE, "a red cat", "job-1")
        assert again.json()["output"]["final"] == done.json()["output"]["final"]
    assert len(gen.prompts) == 2  # alice's one run and bob's


@pytest.mark.parametrize(
    "inputs",
    [[{"prompt": 5}], "x", [1], [None], [[]], [{}], [{"prompt": "a", "max_rounds": "SECRET-VALUE"}],
     [{"prompt": "a cat"}, {"prompt": "a", "seed": -1}], [{"prompt": "a", "refine_mode": "SECRET-VALUE"}]],
)  # fmt: skip
def test_malformed_batch_items_get_one_short_line_not_a_500(app_for, inputs):
    with _client(app_for(api_key="")) as client:
        answer = client.post("/gems/batch", json={"inputs": inputs})
    assert answer.status_code == 422 and answer.text.count("\n") == 0 and len(answer.text) < 1000
    assert "SECRET-VALUE" not in answer.text


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed this connection without an answer (a reset counts: bytes were still in flight)."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_a_connection_that_never_finishes_its_headers_is_closed(app_for):
    from gems.interfaces.serve import uvicorn_options

    with Served(app_for(api_key=""), **uvicorn_options(header_timeout_s=0.5)) as server:

        def connect() -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.settimeout(30)  # a hang guard only: uvicorn alone keeps such a connection open for ever
            return sock

        with connect() as half:
            half.sendall(b"GET /hea")
            assert _closed_by_server(half)
        with connect() as silent:
            assert _closed_by_server(silent)
        with connect() as drip:  # a byte at a time buys no time: the deadline runs from the connect
            stop = threading.Event()

            def trickle() -> None:
                for byte in b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 10_000:
                    if stop.wait(0.05):
                        return
                    try:
                        drip.sendall(bytes([byte]))
                    except OSError:
                        return

            sender = threading.Thread(target=trickle, daemon=True)
            sender.start()
            try:
                assert _closed_by_server(drip)
            finally:
                stop.set()
                sender.join(5)
        # Whole requests still work, on a connection kept alive between them.
        with httpx.Client(base_url=server.url) as client:
            assert [client.get("/health").json() for _ in range(2)] == [{"ok": True}] * 2


def test_nothing_served_names_a_server_path_and_the_playground_feed_is_readable(tenants, isolated_env):
    from gems.interfaces.serve import create_app

    settings, _, _ = tenants()
    secret = str(isolated_env)
    with Served(create_app(settings)) as server:
        headers = {"X-API-Key": ALICE}
        result = _invoke(server.url, ALICE, thread="t1").json()["output"]
        assert set(result) == {"thread_id", "prompt", "skill", "skill_trace", "lessons", "lesson_id", "warnings",
                               "criteria", "success", "final", "rounds", "counts", "usage", "timings",
                               "page"}  # fmt: skip
        image = result["final"]["image"]
        assert "path" not in image and image["url"] == f"/artifacts/{image['sha256']}.png"
        served = {"invoke": json.dumps(result)}
        chunks = list(_stream(server.url, ALICE, "a red cat", "t2"))
        assert chunks[0] == {"node": "__start__", "thread_id": "t2", "page": "/runs/t2/", "line": "Run page: /runs/t2/"}
        assert all(isinstance(c["line"], str | None) for c in chunks) and chunks[-1]["node"] == "__end__"
        served["stream"] = json.dumps(chunks)
        for route in ("batch", "stream_events", "stream_log"):
            body = {"inputs": [{"prompt": "a cat"}]} if route == "batch" else {"input": {"prompt": "a cat"}}
            answer = httpx.post(f"{server.url}/gems/{route}", json=body, headers=headers, timeout=60)
            assert answer.status_code == 200
            served[route] = answer.text
        served["page"] = httpx.get(f"{server.url}/runs/t1/", headers=headers).text
        assert [name for name, text in served.items() if secret in text] == []
        # /stream_log (the playground's feed): lines of text; the first is replaced by the image and page at the end.
        ops = [op for line in served.pop("stream_log").splitlines() if line.startswith("data: {")
               for op in json.loads(line[6:]).get("ops", [])]  # fmt: skip
        served["stream_log values"] = json.dumps([op.get("value") for op in ops])  # JSON patches have a "path"
        assert [name for name, text in served.items() if '"path"' in text] == []
        output = [op["value"] for op in ops if op["path"].startswith("/streamed_output/")]
        assert all(isinstance(x, str) and x.endswith("\n") and "{" not in x for x in output)
        assert output[0].startswith("Run page: /runs/") and output[-1].startswith("done: all criteria passed")
        headline = next(op for op in ops if op["op"] == "replace" and op["path"] == "/streamed_output/0")["value"]
        assert headline.startswith("Final image: /artifacts/") and "\nRun page: /runs/" in headline
