"""Bad model behaviour and hostile inputs get bounded, one-line answers (the first items of the hardening pass)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import ValidationError

from gems.configs import ConfigError, GemsSettings, GeneratorSettings, load_settings
from gems.graph import build_graph, run_config
from gems.interfaces.cli import short
from gems.memory.artifacts import ArtifactError, ArtifactStore
from gems.nodes.generators.openai_backend import OpenAIImagesGenerator
from tests.support.aio import one_image
from tests.support.servers import OpenAIStub, png_bytes


def run(settings: GemsSettings, prompt: str = "a red cat") -> dict:
    graph = build_graph(checkpointer=InMemorySaver())
    return graph.invoke({"prompt": prompt}, run_config(settings, "h"), context=settings)


def test_an_oversized_image_is_refused_from_its_header(stubs):
    s = stubs(gen={"size": 100})  # 100 x 100 = 10,000 pixels
    with pytest.raises(ArtifactError, match=r"100x100 image, over storage.max_pixels \(4096\)"):
        run(s.settings(storage={"checkpointer": "memory", "max_pixels": 4096}))


def test_criteria_are_capped_by_default_with_a_warning(stubs):
    s = stubs(criteria=[f"Is thing {i} there?" for i in range(40)])
    values = run(s.settings(loop={"max_rounds": 1}))
    assert len(values["criteria"]) == 24 and s.script.calls["verify"] == 24
    assert any("wrote 40 criteria; kept the first 24" in w for w in values["warnings"])


def test_a_runaway_refined_prompt_is_cut_before_it_reaches_the_generator(stubs):
    s = stubs(criteria=["Is there a cat?"], verdict=lambda q, n: "yes" if n >= 2 else "no",
              refine=lambda n: "very " * 3000 + "red cat")  # fmt: skip
    values = run(s.settings())
    assert values["success"] is True and len(s.gen.prompts[1]) <= 4000
    assert any("cut to 4000" in w for w in values["warnings"])


def test_a_planted_symlink_in_the_artifact_folder_is_not_followed(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    sha, _ = store.put_png(png_bytes((1, 2, 3)))
    secret = tmp_path / "secret.txt"
    secret.write_text("the server's secrets")
    fake = "f" * 64
    (tmp_path / "artifacts" / f"{fake}.png").symlink_to(secret)
    with pytest.raises(ArtifactError, match="symlink"):
        store.path_for(fake)
    assert store.path_for(sha).is_file()


def test_a_skill_resource_that_links_outside_its_folder_is_not_offered(tmp_path):
    from gems.skills.registry import parse_skill_file

    folder = tmp_path / "skills" / "leaky"
    (folder / "references").mkdir(parents=True)
    (folder / "SKILL.md").write_text("---\nname: leaky\ndescription: a skill with a planted link\n---\nBody.\n")
    (folder / "references" / "notes.md").write_text("fine")
    (tmp_path / "outside.txt").write_text("not for the MLLM")
    (folder / "references" / "passwd.md").symlink_to(tmp_path / "outside.txt")
    assert parse_skill_file(folder / "SKILL.md").resources() == ["references/notes.md"]


def test_openai_image_urls_are_fetched_without_the_key():
    """An endpoint answering `url` gets the key on its own route only; the image host never sees it."""
    seen: dict[str, dict] = {}

    class Endpoint(OpenAIStub):
        def _dispatch(self, handler, raw):
            seen[handler.path] = {k.lower(): v for k, v in handler.headers.items()}
            if handler.path == "/v1/images/generations":
                self._send_json(handler, 200, {"data": [{"url": f"http://127.0.0.1:{self.port}/cdn/a.png"}]})
            else:
                self._send(handler, 200, png_bytes((9, 9, 9)), "image/png")

    server = Endpoint().start()
    try:
        settings = GeneratorSettings(backend="openai", url=server.base_url, model="m", api_key="sk-secret")
        rendered = one_image(OpenAIImagesGenerator(settings).render("a cat", [1]))
        assert rendered.data.startswith(b"\x89PNG")
        assert seen["/v1/images/generations"]["authorization"] == "Bearer sk-secret"
        assert "authorization" not in seen["/cdn/a.png"]
    finally:
        server.stop()


def test_terminal_escapes_in_model_output_are_not_printed():
    assert "\x1b" not in short("\x1b[2J\x1b]0;owned\x07a red cat")
    assert short("a\tred\ncat") == "a red cat"


def test_a_data_dir_that_is_a_file_is_one_clear_line(tmp_path, monkeypatch):
    afile = tmp_path / "data"
    afile.write_text("")
    monkeypatch.setenv("GEMS_DATA_DIR", str(afile))
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        load_settings()


@pytest.mark.parametrize(
    "payload",
    [{"prompt": "   "}, {"prompt": "x", "max_rounds": "5"}, {"prompt": "x", "max_rounds": True},
     {"prompt": "x", "seed": 1e400}, {"prompt": "x", "seed": 2**70}],
)  # fmt: skip
def test_server_requests_take_real_numbers_and_a_real_prompt(payload):
    from gems.interfaces.serve import GemsRequest

    with pytest.raises(ValidationError):
        GemsRequest.model_validate(payload)


def test_no_server_secret_leaves_through_health(tmp_path):
    pytest.importorskip("langserve")
    from fastapi.testclient import TestClient

    from gems.interfaces.serve import create_app

    app = create_app(GemsSettings(data_dir=tmp_path, mllm={"model": "secret-model", "base_url": "http://10.0.0.9/v1"}))
    with TestClient(app) as client:
        body = client.get("/health").text
    assert "secret-model" not in body and "10.0.0.9" not in body


def _completion(text: str) -> bytes:
    body = json.dumps({
        "id": "c", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }).encode()  # fmt: skip
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _models() -> bytes:
    body = json.dumps({"object": "list", "data": [{"id": "stub-vlm", "object": "model"}]}).encode()
    return f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


class Drip:
    """An HTTP server on 127.0.0.1 that answers 200 and then one byte every 0.2 s, for as long as it is let (its
    model list, GET /models, comes whole: the check before a run passes)."""

    def __init__(self, answer: str | None = None) -> None:
        """With `answer`, every request gets that chat answer in full instead, over a kept-alive connection."""
        self.answer = None if answer is None else _completion(answer)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        self.open = 0  # connections still being dripped to: a client that gave up closes its end, which ends one
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with self.lock:
            self.open += 1
        try:
            with contextlib.suppress(OSError), conn:
                request = conn.recv(65536)
                while request and (request.startswith(b"GET ") or self.answer is not None):  # the connection kept
                    conn.sendall(_models() if request.startswith(b"GET ") else self.answer)
                    request = conn.recv(65536)
                if not request:
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                while not self.stop.is_set():
                    conn.sendall(b"1\r\n \r\n")  # fails once the client has closed the connection
                    time.sleep(0.2)
        finally:
            with self.lock:
                self.open -= 1

    def open_connections(self, settle_s: float = 3.0) -> int:
        """Connections a client still holds, after giving closed ones `settle_s` to be noticed (two sends)."""
        deadline = time.monotonic() + settle_s
        while self.open and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.open

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_a_dripping_endpoint_cannot_hold_a_call_past_its_deadline():
    """Past the deadline the call is cancelled: its connection is closed, no thread is left reading it."""
    from gems.configs import MLLMSettings
    from gems.memory.aio import run_blocking
    from gems.nodes.mllm import MLLM, MLLMError

    drip = Drip()
    try:
        mllm = MLLM(MLLMSettings(base_url=drip.url, model="m", api_key="k", timeout_s=1.0, max_retries=0))
        for run in (run_blocking, asyncio.run):
            started = time.monotonic()
            with pytest.raises(MLLMError, match=r"no complete answer within 2s"):
                run(mllm.ask("system", "user"))
            assert time.monotonic() - started < 4  # not the 10+ s the drip would take
        assert drip.open_connections() == 0
    finally:
        drip.close()


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ('{"input": ' + "[" * 100_000 + "]" * 100_000 + "}", 400, "nested too deeply"),
        ('{"input": {"prompt": "\\ud800"}}', 400, "lone surrogate"),
        ('{"input": {"prompt": "x", "seed": 1e400}}', 400, "out of range"),
        ('{"input": {"prompt": "x", "seed": NaN}}', 400, "not a number JSON allows"),
        ('{"input": {"prompt": "' + "x" * 1_100_000 + '"}}', 413, "larger than"),
        ('{"input": {"prompt": "' + "x" * 500_000 + '"}}', 422, "prompt"),
    ],
    ids=["deep", "surrogate", "huge-number", "nan", "too-large", "long-prompt"],
)
def test_hostile_request_bodies_get_a_short_4xx(tmp_path, body, status, says):
    pytest.importorskip("langserve")
    from fastapi.testclient import TestClient

    from gems.interfaces.serve import create_app

    app = create_app(GemsSettings(data_dir=tmp_path), api_key="")
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post("/gems/invoke", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status and says in answer.text
    assert len(answer.content) < 2000  # the input is never echoed back


def test_no_criteria_and_failing_verifiers_are_reported_not_passed_off(stubs, tmp_path):
    from gems.interfaces.cli import main as gems_main
    from tests.support.net import write_stub_config

    s = stubs(criteria=[])
    cfg = write_stub_config(tmp_path / "c.yaml", s.mllm.base_url, s.gen.url)
    values = run(s.settings())
    assert values["success"] is None and values["final"]["total"] == 0 and values["warnings"]
    s2 = stubs(criteria=["Is there a cat?"], fail_verify=("Is there a cat?",))
    values = run(s2.settings(loop={"max_rounds": 1}))
    assert values["success"] is False
    assert any("1 verifier calls failed (counted as fails)" in w for w in values["warnings"])
    assert gems_main(["generate", "a cat", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 0


def test_a_header_that_is_not_utf8_is_a_4xx_not_a_crash(tmp_path):
    pytest.importorskip("langserve")
    from fastapi.testclient import TestClient

    from gems.interfaces.serve import create_app

    app = create_app(GemsSettings(data_dir=tmp_path), api_key="k" * 16)
    with TestClient(app, raise_server_exceptions=False) as client:
        for headers in (
            {"X-API-Key": b"\xff\xfe"},
            {"Authorization": b"Bearer \xc3("},
            {"Cookie": b"gems_session=\xff"},
        ):
            assert client.get("/gems/input_schema", headers=headers).status_code == 401
        thread = {"X-API-Key": "k" * 16, "X-Thread-Id": b"caf\xe9"}
        answer = client.post("/gems/invoke", json={"input": {"prompt": "a cat"}}, headers=thread)
        assert answer.status_code == 422 and "X-Thread-Id" in answer.text


def test_a_dripping_embedding_endpoint_is_bounded_too():
    from gems.configs import EmbeddingSettings
    from gems.memory.embeddings import EmbeddingError, EndpointEmbeddings

    drip = Drip()
    try:
        settings = EmbeddingSettings(provider="openai", model="e", base_url=drip.url, api_key="k", timeout_s=1,
                                     max_retries=0)  # fmt: skip
        started = time.monotonic()
        with pytest.raises(EmbeddingError, match=r"no complete answer within 1s"):
            EndpointEmbeddings(settings).embed_documents(["a cat"])
        assert time.monotonic() - started < 4
        assert drip.open_connections() == 0
    finally:
        drip.close()


def _gems_process(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "GEMS_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "gems.interfaces.cli", *args], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)  # fmt: skip


def _line_then_exit(proc: subprocess.Popen, wanted: str, timeout: float = 60) -> tuple[str, float]:
    """Read stderr until a line holding `wanted`; return it and the seconds from that line to the process's exit."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        if wanted in line:
            seen = time.monotonic()
            proc.wait(timeout=max(1, deadline - seen))
            return line, time.monotonic() - seen
        assert time.monotonic() < deadline, f"no line with {wanted!r}"
    raise AssertionError(f"the process ended without a line holding {wanted!r}")


# The drip never stops and the held call is never released: a process left waiting on either would not exit at all.
# The bound below only tells "exits" from "hangs"; the measured time is printed (0.9 s here, other jobs running).
EXITS_S = 30


@pytest.mark.slow
def test_a_fired_deadline_ends_the_cli_promptly(gen_server, tmp_path):
    """The one-line error, then exit: no worker left reading the dripping server keeps the process alive."""
    from tests.support.net import write_stub_config

    drip = Drip()
    try:
        cfg = write_stub_config(tmp_path / "c.yaml", drip.url, gen_server().url,
                                mllm={"timeout_s": 2, "max_retries": 0})  # fmt: skip
        proc = _gems_process(["generate", "a red cat", "--config", str(cfg)], tmp_path)
        line, exit_after = _line_then_exit(proc, "gems: error:")
        assert "no complete answer within 3s" in line and proc.returncode == 1
        print(f"exited {exit_after:.2f}s after the error")
        assert exit_after < EXITS_S, f"exited {exit_after:.1f}s after the error"
        assert drip.open_connections() == 0
    finally:
        drip.close()


@pytest.mark.slow
def test_ctrl_c_mid_call_ends_the_cli_promptly_and_the_run_resumes(mllm_server, gen_server, tmp_path):
    from tests.support.net import write_stub_config

    server, script = mllm_server(criteria=["Is there a cat?"], block_at=("verify", 1))
    cfg = write_stub_config(tmp_path / "c.yaml", server.base_url, gen_server().url)
    proc = _gems_process(["generate", "a red cat", "--config", str(cfg), "--thread-id", "t1"], tmp_path)
    try:
        assert script.blocked.wait(60), "the verifier call never arrived"
        proc.send_signal(signal.SIGINT)
        line, exit_after = _line_then_exit(proc, "progress is saved")
        print(f"exited {exit_after:.2f}s after Ctrl-C")
        assert "--resume t1" in line and proc.returncode == 130 and exit_after < EXITS_S
    finally:
        script.release.set()
        if proc.poll() is None:
            proc.kill()
    resumed = _gems_process(["generate", "--resume", "t1", "--config", str(cfg)], tmp_path)
    _, _ = _line_then_exit(resumed, "all criteria passed")
    assert resumed.returncode == 0


def test_a_run_killed_before_any_node_finished_resumes_with_its_options(stubs, tmp_path):
    """The first checkpoint (the input) pins the run's options, so --resume without flags runs as started."""
    from gems.graph import run_input
    from gems.interfaces.cli import main as gems_main
    from gems.memory.checkpoint import open_checkpointer
    from tests.support.net import write_stub_config

    s = stubs(criteria=["Is there a cat?"], verdict=lambda q, n: "no")
    cfg = write_stub_config(tmp_path / "c.yaml", s.mllm.base_url, s.gen.url)  # 5 rounds by default
    started = load_settings(cfg, overrides={"loop.max_rounds": 2, "loop.seed": 40})  # gems generate --max-rounds 2
    with open_checkpointer(started) as saver:
        graph = build_graph(checkpointer=saver)
        config = run_config(started, "early")
        graph.invoke(run_input("a red cat", started), config, context=started, interrupt_before=["intake"])
        assert graph.get_state(config).next == ("intake",)  # nothing ran: as after a kill -9 at the first step
    assert gems_main(["generate", "--resume", "early", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 0
    assert len(s.gen.prompts) == 2 and s.gen.seeds == ["40", "41"]  # its own budget and seed, not the defaults


@pytest.mark.parametrize(
    ("answer", "failure"),
    [(None, "no complete answer"), ("yes", "did not return a JSON list")],
    ids=["dripping", "kept-alive"],
)
def test_short_lived_loops_leave_no_connection_open(stubs, answer, failure):
    """Two runs on loops of their own (as `gems generate` and `gems bench` run them), against a server that drips
    (calls past their deadline, siblings cancelled) or one that answers and keeps its connections for reuse:
    when each loop ends, nothing stays open."""
    from gems.graph import run_input
    from gems.memory.aio import run_main
    from gems.nodes.mllm import MLLMError

    s = stubs(criteria=["Is there a cube?", "Is it red?"])
    drip = Drip(answer)
    try:
        base = s.settings(skills={"enabled": False})
        dripping = base.mllm.model_copy(update={"base_url": drip.url, "timeout_s": 1.0, "max_retries": 0})
        settings = base.model_copy(update={"mllm": dripping})
        graph = build_graph(checkpointer=InMemorySaver())
        gc.disable()  # closed on purpose, not when the collector happens to reach an abandoned pool
        for thread in ("d1", "d2"):
            run = graph.ainvoke(run_input("a red cube", settings), run_config(settings, thread), context=settings)
            with pytest.raises(MLLMError, match=failure):
                run_main(run)
        assert drip.open_connections() == 0
    finally:
        gc.enable()
        drip.close()
