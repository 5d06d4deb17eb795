"""Local HTTP servers on 127.0.0.1 that stand in for what sits behind the network boundary.

- `OpenAIStub`: an OpenAI-compatible server (`/v1/chat/completions`, `/v1/images/generations`, multipart
  `/v1/images/edits`) answering from per-test handlers; the real `ChatOpenAI` client talks to it.
- `ScriptedMLLM`: a chat handler that recognises each GEMS role by its system prompt and answers from a script.
- `GeneratorStub`: the reference GEMS generator protocol (`POST /?prompt=` -> PNG bytes).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import re
import select
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from PIL import Image, PngImagePlugin


class HTTPFailure(Exception):
    """Raise inside a handler to answer with an HTTP error status."""

    def __init__(self, status: int, message: str = "scripted failure"):
        super().__init__(message)
        self.status = status
        self.message = message


def png_bytes(color: tuple[int, int, int], size: int = 32, text: str | None = None, noise: bool = False) -> bytes:
    if noise:  # incompressible, so a PNG of it is as large as a real photo's
        image = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    else:
        image = Image.new("RGB", (size, size), color)
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("prompt", text)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def fake_embedding(text: str, dims: int = 8) -> list[float]:
    """A deterministic unit vector from the words of a text (shared words, closer vectors)."""
    vector = [0.0] * dims
    for word in text.lower().split():
        vector[hashlib.sha256(word.encode()).digest()[0] % dims] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def color_for(text: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(text.encode()).digest()
    return digest[0], digest[1], digest[2]


class _Listener(ThreadingHTTPServer):
    request_queue_size = 1024  # hundreds of clients connect at once in the scale tests and benchmarks


class _Server:
    def __init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                owner.arrivals.append(time.perf_counter())
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                owner._dispatch(self, raw)

            def do_GET(self) -> None:
                owner._dispatch(self, b"")

        self.httpd = _Listener(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.requests: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # time.perf_counter() of each request, for latency benchmarks
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _dispatch(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, headers: dict | None = None):
        try:
            handler.send_response(status)
            handler.send_header("content-type", ctype)
            handler.send_header("content-length", str(len(body)))
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send_json(self, handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        self._send(handler, status, json.dumps(payload).encode(), "application/json")


ChatHandler = Callable[[dict[str, Any]], Any]
ImageHandler = Callable[[dict[str, Any]], bytes]


class OpenAIStub(_Server):
    """OpenAI-compatible endpoint; `chat` returns a str, a dict with content/reasoning_content, or raises.

    `watch_disconnects`: while a chat answer is being made, watch the client's connection and record in
    `disconnects` (time.monotonic()) each one the client closed before the answer, e.g. a cancelled run's call.
    """

    def __init__(
        self,
        chat: ChatHandler | None = None,
        images: ImageHandler | None = None,
        edits: ImageHandler | None = None,
        watch_disconnects: bool = False,
        models: tuple[str, ...] = (),
    ):
        super().__init__()
        self.chat = chat
        self.models = models  # what GET /v1/models lists (answered, not recorded in `requests`)
        self.watch_disconnects = watch_disconnects
        self.disconnects: list[float] = []
        self.images = images
        self.edits = edits  # gets the form fields, plus `image` (bytes) and `image_type`

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _dispatch(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        path = urlparse(handler.path).path
        if path == "/v1/models" and handler.command == "GET":  # `gems generate` asks before a run
            listed = [{"id": m, "object": "model"} for m in self.models]
            self._send_json(handler, 200, {"object": "list", "data": listed})
            return
        ctype = handler.headers.get("content-type") or ""
        body = parse_multipart(ctype, raw) if ctype.startswith("multipart/") else json.loads(raw or b"{}")
        with self.lock:
            self.requests.append(
                {"path": path, "body": body, "headers": {k.lower(): v for k, v in handler.headers.items()}}
            )
        try:
            if path == "/v1/chat/completions" and self.chat is not None:
                answer = self._watched(handler, body) if self.watch_disconnects else self.chat(body)
                if isinstance(answer, str):
                    answer = {"content": answer}
                message = {"role": "assistant", "content": answer.get("content")}
                if answer.get("reasoning_content"):
                    message["reasoning_content"] = answer["reasoning_content"]
                if answer.get("tool_calls"):
                    message["tool_calls"] = [
                        {
                            "id": f"call_{i}",
                            "type": "function",
                            "function": {"name": name, "arguments": json.dumps(args)},
                        }
                        for i, (name, args) in enumerate(answer["tool_calls"])
                    ]
                choice_logprobs = None
                if answer.get("top_logprobs"):  # [(token, probability), ...], the first being the answer
                    top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in answer["top_logprobs"]]
                    choice_logprobs = {"content": [{**top[0], "top_logprobs": top}]}
                payload = {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "stub"),
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": "tool_calls" if answer.get("tool_calls") else "stop",
                            **({"logprobs": choice_logprobs} if choice_logprobs else {}),
                        }
                    ],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
                }
                self._send_json(handler, 200, payload)
            elif path == "/v1/embeddings":
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                data = [
                    {"object": "embedding", "index": i, "embedding": fake_embedding(t)} for i, t in enumerate(texts)
                ]
                self._send_json(handler, 200, {"object": "list", "data": data, "model": body.get("model"),
                                               "usage": {"prompt_tokens": 1, "total_tokens": 1}})  # fmt: skip
            elif path in ("/v1/images/generations", "/v1/images/edits") and (
                handler_fn := self.images if path.endswith("generations") else self.edits
            ):
                data = handler_fn(body)
                self._send_json(
                    handler,
                    200,
                    {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(data).decode()}]},
                )
            else:
                self._send_json(handler, 404, {"error": {"message": f"no route {path}", "type": "not_found"}})
        except HTTPFailure as exc:
            self._send_json(handler, exc.status, {"error": {"message": exc.message, "type": "server_error"}})
        except Exception as exc:  # a bug in a test's script: answer 599 so the test fails loudly, not by timeout
            import traceback

            traceback.print_exc()
            self._send_json(handler, 599, {"error": {"message": f"stub script crashed: {exc!r}", "type": "stub"}})

    def _watched(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> Any:
        """The chat answer, while a thread notes the moment the client closes its connection (if it does)."""
        done = threading.Event()

        def watch() -> None:
            conn = handler.connection
            while not done.is_set():
                try:
                    ready, _, _ = select.select([conn], [], [], 0.02)
                    if ready and conn.recv(1, socket.MSG_PEEK) == b"":
                        with self.lock:
                            self.disconnects.append(time.monotonic())
                        return
                except (OSError, ValueError):
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            return self.chat(body)  # type: ignore[misc]
        finally:
            done.set()
            watcher.join()


def parse_multipart(content_type: str, raw: bytes) -> dict[str, Any]:
    """A multipart/form-data body as a dict: text fields as str, a file field as bytes plus `<name>_type`."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    out: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            out[name] = payload
            out[f"{name}_type"] = part.get_content_type()
        else:
            out[name] = payload.decode()
    return out


def edited_png(body: dict[str, Any], size: int | None = None) -> bytes:
    """What the edit stub answers: the input image recoloured from the instruction, the instruction in its text."""
    source = Image.open(io.BytesIO(body["image"]))
    return png_bytes(color_for(body["prompt"]), size=size or source.width, text=body["prompt"])


def _system_text(body: dict[str, Any]) -> str:
    for message in body.get("messages", []):
        if message.get("role") in ("system", "developer"):
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def user_text(body: dict[str, Any]) -> str:
    """All text of the user message(s) in a chat request."""
    out = []
    for message in body.get("messages", []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
            else:
                out.extend(p.get("text", "") for p in content if p.get("type") == "text")
    return "\n".join(out)


def image_urls(body: dict[str, Any]) -> list[str]:
    urls = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            urls.extend(p["image_url"]["url"] for p in content if p.get("type") == "image_url")
    return urls


def image_prompt(body: dict[str, Any]) -> str | None:
    """The prompt `GeneratorStub` wrote into the PNG the request shows (tells which round an image is from)."""
    urls = image_urls(body)
    if not urls:
        return None
    image = Image.open(io.BytesIO(base64.b64decode(urls[-1].split(",", 1)[1])))
    return getattr(image, "text", {}).get("prompt")


def role_of(body: dict[str, Any]) -> str:
    """Which GEMS role sent this request, told by the first line of its system prompt."""
    from gems.nodes.prompts.compress import COMPRESS_SYSTEM
    from gems.nodes.prompts.decompose import DECOMPOSE_SYSTEM
    from gems.nodes.prompts.evolve import PROPOSE_SYSTEM
    from gems.nodes.prompts.intake import FOLLOW_UP_SYSTEM
    from gems.nodes.prompts.plan import ENHANCE_SYSTEM, PLANNER_SYSTEM, ROUTER_SYSTEM
    from gems.nodes.prompts.refine import CHOOSE_SYSTEM, EDIT_SYSTEM, REFINE_SYSTEM
    from gems.nodes.prompts.rewrite import REWRITE_SYSTEM
    from gems.nodes.prompts.verify import VERIFY_BATCH_SYSTEM, VERIFY_SYSTEM

    system = _system_text(body)
    for role, prompt in (
        ("planner", PLANNER_SYSTEM),
        ("route", ROUTER_SYSTEM),
        ("enhance", ENHANCE_SYSTEM),
        ("decompose", DECOMPOSE_SYSTEM),
        ("verify", VERIFY_SYSTEM),
        ("verify_batch", VERIFY_BATCH_SYSTEM),
        ("compress", COMPRESS_SYSTEM),
        ("refine", REFINE_SYSTEM),
        ("edit", EDIT_SYSTEM),
        ("choose", CHOOSE_SYSTEM),
        ("rewrite", REWRITE_SYSTEM),
        ("propose", PROPOSE_SYSTEM),
        ("follow_up", FOLLOW_UP_SYSTEM),
    ):
        if system.startswith(prompt.splitlines()[0]):
            return role
    return "other"


class ScriptedMLLM:
    """Answers each GEMS role from a script; verdicts may depend on the criterion and how often it was asked.

    Args:
        criteria: the decomposer's answer: a list (sent as JSON) or a raw string.
        criteria_retry: the answer to the decomposer's repair request, if it comes to that.
        verdict: `f(criterion, attempt)` -> answer text, `attempt` counting from 1 per criterion.
        verdict_by_image: `f(criterion, prompt the image was generated from)` -> answer; use it when runs overlap.
        route: the router's answer (a skill name makes the tool-calling planner call load_skill with it).
        enhance: the enhancer's answer (the planner's turn after a tool result), or `f(body)` -> the answer.
        planner: `f(turn, messages)` -> the planner's full answer, overriding route/enhance for tool mode.
        agent: `f(body)` -> the answer to requests from no GEMS role (an agent calling gems as a tool).
        refine: `f(n)` -> the n-th refined prompt; reasoning: sent as `reasoning_content` by the refiner.
        edit: `f(n)` -> the n-th edit instruction (refine_mode edit).
        choose: `f(n)` -> the n-th `ACTION:/REASON:/TEXT:` answer (refine_mode auto).
        propose: `f(n, body)` -> the skill proposer's n-th answer (gems skills evolve).
        follow_up: `f(body)` -> a follow-up chat message made into a whole request (the intake's call).
        fail_verify: criteria whose verifier call answers HTTP 500.
        batch_skip: criteria a batched verifier answer leaves out (the node must ask them again alone).
        block_at: `(role, n)`: the n-th call of that role waits until `release` is set (a test kills its client).
    """

    def __init__(
        self,
        criteria: list[str] | str = ("Is there a cat?", "Is the cat red?"),
        criteria_retry: list[str] | str | None = None,
        verdict: Callable[[str, int], str] = lambda q, n: "yes",
        route: str = "NONE",
        enhance: str | Callable[[dict[str, Any]], str] = "an enhanced prompt",
        refine: Callable[[int], str] = lambda n: f"refined prompt {n}",
        compress: str = "Lesson: make the failed parts explicit.",
        reasoning: str | None = None,
        fail_verify: tuple[str, ...] = (),
        batch_skip: tuple[str, ...] = (),
        planner: Callable[[int, list[dict[str, Any]]], Any] | None = None,
        agent: Callable[[dict[str, Any]], Any] | None = None,
        verdict_by_image: Callable[[str, str | None], str] | None = None,
        block_at: tuple[str, int] | None = None,
        edit: Callable[[int], str] = lambda n: f"edit instruction {n}",
        choose: Callable[[int], str] = lambda n: f"ACTION: edit\nREASON: local fix\nTEXT: edit instruction {n}",
        propose: Callable[[int, dict[str, Any]], str] = lambda n, body: "[]",
        follow_up: Callable[[dict[str, Any]], str] = lambda body: "a whole request",
        tool_skills: tuple[str, ...] = (
            "creative-drawing",
            "aesthetic-drawing",
            "spatial-layout",
            "text-rendering",
            "counting",
            "photorealism",
            "negation",
            "cjk-text-rendering",
            "product-shot",
        ),
    ):
        self.criteria_answers = [criteria] if criteria_retry is None else [criteria, criteria_retry]
        self.verdict = verdict
        self.route = route
        self.enhance = enhance
        self.refine = refine
        self.edit = edit
        self.choose = choose
        self.propose = propose
        self.follow_up = follow_up
        self.compress = compress
        self.reasoning = reasoning
        self.fail_verify = set(fail_verify)
        self.batch_skip = set(batch_skip)
        self.tool_skills = set(tool_skills)
        self.planner = planner
        self.agent = agent
        self.verdict_by_image = verdict_by_image
        self.block_at = block_at
        self.blocked = threading.Event()
        self.release = threading.Event()
        self.calls: Counter[str] = Counter()
        self.asked: defaultdict[str, int] = defaultdict(int)
        self.bodies: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def holding(self, role: str) -> Iterator[None]:
        """Hold the next call of `role` while the block runs (`blocked` is set once it has arrived); it is answered
        when the block ends, however it ends."""
        self.block_at = (role, self.calls[role] + 1)
        self.blocked.clear()
        self.release.clear()
        try:
            yield
        finally:
            self.block_at = None
            self.release.set()

    def _verdict(self, criterion: str, body: dict[str, Any]) -> str:
        if self.verdict_by_image is not None:  # order-free: decided by what the image was made from
            return self.verdict_by_image(criterion, image_prompt(body))
        with self.lock:
            self.asked[criterion] += 1
            attempt = self.asked[criterion]
        return self.verdict(criterion, attempt)

    def __call__(self, body: dict[str, Any]) -> Any:
        role = role_of(body)
        if role == "planner" and self.planner is not None:
            with self.lock:
                self.calls["planner"] += 1
                self.bodies["planner"].append(body)
                turn = self.calls["planner"]
            return self.planner(turn, body.get("messages", []))
        if role == "planner":
            # The tool-calling planner: its first turn routes, its turn after a tool result enhances.
            tool_results = [m for m in body.get("messages", []) if m.get("role") == "tool"]
            role = "enhance" if tool_results else "route"
            if role == "route" and self.route in self.tool_skills:
                with self.lock:
                    self.calls[role] += 1
                    self.bodies[role].append(body)
                return {"content": None, "tool_calls": [("load_skill", {"name": self.route})]}
        with self.lock:
            self.calls[role] += 1
            self.bodies[role].append(body)
            count = self.calls[role]
        if self.block_at == (role, count):
            self.blocked.set()
            self.release.wait(timeout=60)
        if role == "route":
            return self.route
        if role == "enhance":
            return self.enhance(body) if callable(self.enhance) else self.enhance
        if role == "decompose":
            answer = self.criteria_answers[min(count - 1, len(self.criteria_answers) - 1)]
            return answer if isinstance(answer, str) else json.dumps(list(answer))
        if role == "verify":
            criterion = user_text(body).removeprefix("Question: ").strip()
            if criterion in self.fail_verify:
                raise HTTPFailure(500, "verifier exploded")
            return self._verdict(criterion, body)
        if role == "verify_batch":  # loop.verify batched: every numbered question of one image, as JSON
            questions = re.findall(r"^\d+\. (.+)$", user_text(body), re.M)
            answers = [{"n": n, "answer": self._verdict(q, body), "why": "scripted"}
                       for n, q in enumerate(questions, 1) if q not in self.batch_skip]  # fmt: skip
            return json.dumps(answers)
        if role == "compress":
            return self.compress
        # loop.compress merged: the refiner writes the round's lesson first.
        lesson = f"LESSON: {self.compress}\n" if "LESSON:" in _system_text(body) else ""
        if role == "refine":
            label = "PROMPT: " if lesson else ""
            return {"content": f"{lesson}{label}{self.refine(count)}", "reasoning_content": self.reasoning}
        if role == "edit":
            return f"{lesson}{'INSTRUCTION: ' if lesson else ''}{self.edit(count)}"
        if role == "choose":
            return lesson + self.choose(count)
        if role == "propose":
            return self.propose(count, body)
        if role == "follow_up":
            return self.follow_up(body)
        if role == "rewrite":
            return f"rewritten: {user_text(body)}"
        if self.agent is not None:  # anything else is an outside agent that uses gems as a tool
            return self.agent(body)
        return "?"


class GeneratorStub(_Server):
    """The reference GEMS generator protocol: `POST <url>?prompt=...` answered with PNG bytes.

    Each image gets a colour from the prompt and the call number, and carries the prompt in a PNG text chunk.
    `fail_first` answers that many calls with HTTP 500; `block_on_call` makes that call (1-based) wait until
    `release` is set, so a test can kill a client mid-generation.
    """

    def __init__(
        self,
        fail_first: int = 0,
        status: int = 500,
        block_on_call: int | None = None,
        size: int = 32,
        noise=False,
        render: Callable[[str, int], bytes] | None = None,
        latency: float = 0.0,
    ):
        super().__init__()
        self.render = render
        self.latency = latency  # seconds per image, one image at a time (like one GPU)
        self.gpu = threading.Lock()
        self.size = size
        self.noise = noise
        self.fail_first = fail_first
        self.status = status
        self.block_on_call = block_on_call
        self.release = threading.Event()
        self.blocked = threading.Event()
        self.prompts: list[str] = []
        self.seeds: list[str | None] = []  # the seed each request asked for (gems' http backend sends one)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/generate"

    def _dispatch(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        query = parse_qs(urlparse(handler.path).query)
        prompt = query.get("prompt", [""])[0]
        with self.lock:
            self.prompts.append(prompt)
            self.seeds.append(query.get("seed", [None])[0])
            call = len(self.prompts)
        if call <= self.fail_first:
            self._send(handler, self.status, b"model exploded", "text/plain")
            return
        if self.block_on_call is not None and call == self.block_on_call:
            self.blocked.set()
            self.release.wait(timeout=60)
        if self.latency:
            with self.gpu:
                time.sleep(self.latency)
        if self.render is not None:
            data = self.render(prompt, call)
        else:
            data = png_bytes(color_for(f"{prompt}#{call}"), size=self.size, text=prompt, noise=self.noise)
        self._send(handler, 200, data, "image/png", {"x-seed": str(1000 + call)})
