"""`gems serve`: the graph behind a LangServe endpoint, hardened for use beyond localhost.

Routes: `/gems/invoke`, `/gems/batch`, `/gems/stream`, `/gems/stream_log`, `/gems/stream_events`,
`/gems/playground/`; `/artifacts/<sha256>.png` for the images; `/runs/<thread>/` a run's page; `/signin`; `/health`.
A run's thread comes from the `X-Thread-Id` header (a new one otherwise): the same id continues an interrupted run
or returns the finished one, never generates twice, and while it runs another request for it gets 409. With
`GEMS_API_KEY` (or `GEMS_API_KEYS`, `name:key,...`; 16 characters or more) set, every route but `/health` and
`/signin` needs `Authorization: Bearer <key>`, `X-API-Key: <key>`, or the session cookie a browser gets by signing
in once at `/signin`; a client that offers 5 wrong keys in a minute waits. Images are served only to the tenant
whose run made them. Bodies are bounded in size and time, browsers' cross-site POSTs refused. At most
`max_concurrent` runs execute at once; others wait up to `queue_timeout_s`, then get 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import json
import math
import re
import secrets
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from langchain_core.tracers.log_stream import RunLog, RunLogPatch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema

from gems.configs import ConfigError, GemsSettings, load_settings
from gems.configs.settings import MAX_ROUNDS, missing_editor
from gems.graph.builder import build_graph, continuation, run_config
from gems.interfaces.keys import KEY_HELP, api_keys_from_env, check_keys, key_name, offered_key
from gems.interfaces.pages import run_page, run_status
from gems.memory.artifacts import ArtifactError, ArtifactStore
from gems.memory.checkpoint import open_checkpointer
from gems.memory.store import open_store
from gems.memory.trajectory import run_result

MAX_PROMPT_CHARS = 2000
THREAD_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
MAX_BATCH = 16  # inputs in one /gems/batch; each also takes a run slot


def tenant_thread(tenant: str | None, thread_id: str) -> str:
    """The checkpoint thread of a client's thread id: inside its tenant, so tenants never meet."""
    return f"{tenant}/{thread_id}" if tenant else thread_id


def client_thread(thread_id: str) -> str:
    return thread_id.rpartition("/")[2]


def _no_default(schema: dict[str, Any]) -> None:
    # A `"default": null` would be filled into the form and fail its own integer check.
    schema.pop("default", None)


class GemsRequest(BaseModel):
    """One image request. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS, pattern=r"\S", description="what the image must show"
    )
    # Optional, null accepted, but no `{"type": "null"}` in the schema: the playground's form cannot draw one.
    # Strict: "5", 5.0 and true are not a number of rounds.
    max_rounds: Annotated[int, Field(strict=True, ge=1, le=MAX_ROUNDS)] | SkipJsonSchema[None] = Field(
        None, description="attempts before the best is returned", json_schema_extra=_no_default
    )
    seed: Annotated[int, Field(strict=True, ge=0, lt=2**63)] | SkipJsonSchema[None] = Field(
        None, description="base seed for reproducible generations", json_schema_extra=_no_default
    )
    refine_mode: Literal["regenerate", "edit", "auto"] | SkipJsonSchema[None] = Field(
        None,
        description="regenerate (a new prompt each round), edit (fix the best image so far) or auto; edit and auto "
        "need an editor in the server's config",
        json_schema_extra=_no_default,
    )


def _jsonable(value: Any) -> Any:
    """Plain JSON for LangServe's serializer: messages become dicts, everything else passes through."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "messages"}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def _served(value: Any, found: set[str] | None = None) -> Any:
    """What a client may see of a value: each image reference gets its `url` and loses its server `path`.

    `found` collects the sha256 of every image named, so the caller can let the tenant fetch them.
    """
    if isinstance(value, dict):
        out = {k: _served(v, found) for k, v in value.items() if k != "path"}
        if isinstance(out.get("sha256"), str):  # an image reference (state names images by digest)
            out["url"] = f"/artifacts/{out['sha256']}.png"
            if found is not None:
                found.add(out["sha256"])
        return out
    if isinstance(value, list):
        return [_served(v, found) for v in value]
    return value


def _one_line(text: Any, width: int = 200) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def progress_line(node: str, update: dict[str, Any]) -> str | None:
    """A node's streamed update as one short line for people (None: nothing worth a line)."""
    if node == "decompose":
        criteria = update.get("criteria") or []
        return _one_line(f"criteria ({len(criteria)}): " + "; ".join(map(str, criteria)))
    if node in ("prepare", "planner"):  # the planner subgraph's update holds what prepare wrote
        skill = f" (skill {update['skill']})" if update.get("skill") else ""
        return _one_line(f"first prompt{skill}: {update.get('current_prompt')}")
    if node == "generate":
        urls = [c.get("url") for c in update.get("candidates") or [] if isinstance(c, dict)]
        return f"round {update.get('round')}: {len(urls)} image(s) {' '.join(map(str, urls))}"
    if node == "verify":
        lines = [
            _one_line(f"round {v.get('round')}: {'yes' if v.get('passed') else 'no'} - {v.get('criterion')}")
            for v in update.get("verdicts") or []
        ]
        return "\n".join(lines) or None
    if node in ("critique", "compress"):
        last = (update.get("rounds") or [{}])[-1]
        if node == "compress":
            return _one_line(f"round {last.get('round')} experience: {last.get('experience')}")
        passed, failed = len(last.get("passed") or []), len(last.get("failed") or [])
        return f"round {last.get('round')}: {passed}/{passed + failed} criteria passed"
    if node == "refine":
        action = update.get("action") or {}
        verb = "edit" if action.get("mode") == "edit" else "prompt"
        return _one_line(f"round {action.get('round')} {verb}: {update.get('current_prompt')}")
    if node == "finalize":
        final = update.get("final") or {}
        return f"chosen: round {final.get('round')}, {final.get('passed')}/{final.get('total')} criteria passed"
    if node == "__interrupt__":
        return "paused for review: send the same X-Thread-Id to go on"
    return None  # review, skills, learn: nothing a person needs


def _headline(result: dict[str, Any]) -> str:
    """The first lines of the playground's output once a run is done: the image, then the run's page."""
    image = (result.get("final") or {}).get("image") or {}
    first = f"Final image: {image['url']}" if image.get("url") else "No final image (see the run page)"
    return f"{first}\nRun page: {result.get('page')}\n\n"


def _done_line(result: dict[str, Any]) -> str:
    final = result.get("final") or {}
    if result.get("success"):
        verdict = "all criteria passed"
    elif result.get("success") is None:
        verdict = "nothing to check"
    else:
        verdict = "best so far"
    return f"done: {verdict} ({final.get('passed')}/{final.get('total')}, round {final.get('round')})\n"


def _readable(patch: RunLogPatch) -> RunLogPatch:
    """A /stream_log patch with each streamed chunk as text: the playground prints chunks one after another.

    The first chunk (the run's page) is replaced at the end by the final image and the page, so the output
    starts with the links; the result itself goes to `final_output`, which the playground does not print.
    """
    ops: list[dict[str, Any]] = []
    for op in patch.ops:
        path, chunk = op.get("path", ""), op.get("value")
        if path.startswith("/final_output"):
            continue  # each chunk again; the result is set once below
        if path != "/streamed_output/-" or not isinstance(chunk, dict):
            ops.append(op)
        elif chunk.get("node") == "__end__":
            result = chunk.get("result") or {}
            ops += [
                {"op": "replace", "path": "/streamed_output/0", "value": _headline(result)},
                {"op": "add", "path": "/streamed_output/-", "value": _done_line(result)},
                {"op": "replace", "path": "/final_output", "value": result},
            ]
        elif chunk.get("line"):
            ops.append({**op, "value": chunk["line"] + "\n"})
    return RunLogPatch(*ops)


class NoEditor(Exception):
    """A request asks for refine_mode edit or auto and the server has no editor: answered 422."""


class BatchTooLarge(Exception):
    """More inputs in one /gems/batch than MAX_BATCH: answered 413."""


class ThreadConflict(Exception):
    """A known thread id sent with another prompt: answered 409, never another run's result."""


class ThreadBusy(ThreadConflict):
    """The thread is running for another request right now: answered 409; a second run never starts."""


THREAD_BUSY = "this thread is running for another request; retry when it has finished, or use another X-Thread-Id"
# What a run page tells a client about a run that stopped, or paused for review.
SERVE_RESUME = "To resume it from its last checkpoint, send the same request again with X-Thread-Id: {thread_id}."
SERVE_REVIEW = (
    "This server cannot take a review's answer (its config pauses runs for one: loop.human_review or review_rounds); "
    "the same request with this X-Thread-Id stops here again. Send it on a new X-Thread-Id once the server's config "
    "no longer asks for review."
)


class ServerBusy(Exception):
    """No run slot freed up within the queue timeout: answered 429."""


class ArtifactGrants:
    """Which images each tenant may fetch: those named in answers to its own runs (in SQLite, so restarts keep them).

    Tenant "" is the shared space (one `GEMS_API_KEY`, or no keys).
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()  # one connection, used from the event loop and from worker threads
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS grants (tenant TEXT NOT NULL, sha256 TEXT NOT NULL, "
                       "PRIMARY KEY (tenant, sha256)) WITHOUT ROWID")  # fmt: skip
            self._db = db
        return self._db

    def grant(self, tenant: str, hashes: set[str]) -> None:
        if hashes:
            with self._lock, self._conn() as db:
                db.executemany("INSERT OR IGNORE INTO grants VALUES (?, ?)", [(tenant, h) for h in sorted(hashes)])

    def allows(self, tenant: str, sha256: str) -> bool:
        with self._lock:
            row = self._conn().execute("SELECT 1 FROM grants WHERE tenant = ? AND sha256 = ?", (tenant, sha256))
            return row.fetchone() is not None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class GemsService(Runnable[dict, dict]):
    """The Runnable LangServe serves: validates, picks the thread, runs the graph, returns JSON with image URLs.

    Every run (each input of a batch too) takes one of `max_concurrent` slots, waiting up to `queue_timeout_s`.
    A client's thread id lives inside its tenant (the name of its API key): `alice`'s `t1` is `alice/t1` here.
    A thread serves one request at a time: another request for it meanwhile gets `ThreadBusy` (409).
    `grants` records which images each tenant was shown, so `/artifacts/` serves them to that tenant only.
    """

    def __init__(
        self, settings: GemsSettings, checkpointer: Any, store: Any = None, *, max_concurrent: int = 2,
        queue_timeout_s: float = 30.0, grants: ArtifactGrants | None = None,
    ):  # fmt: skip
        self.settings = settings
        self.graph = build_graph(checkpointer=checkpointer, store=store)
        self.slots = asyncio.Semaphore(max_concurrent)
        self.queue_timeout_s = queue_timeout_s
        self.grants = grants
        self._running: set[str] = set()  # checkpoint thread ids with a request in progress
        self._running_lock = threading.Lock()  # invoke (worker threads) and ainvoke (the loop) share the set

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(self.slots.acquire(), timeout=self.queue_timeout_s)
        except TimeoutError:
            raise ServerBusy("too many runs in progress; retry later") from None
        try:
            yield
        finally:
            self.slots.release()

    def busy(self, thread: str) -> bool:
        """Whether a request for this checkpoint thread is in progress."""
        return thread in self._running

    @contextlib.contextmanager
    def _claim(self, run_cfg: dict[str, Any]) -> Iterator[None]:
        """Hold the thread for this request, before its state is read: a second request meanwhile is refused."""
        thread = run_cfg["configurable"]["thread_id"]
        with self._running_lock:
            if thread in self._running:
                raise ThreadBusy(THREAD_BUSY)
            self._running.add(thread)
        try:
            yield
        finally:
            with self._running_lock:
                self._running.discard(thread)

    def _prepare(self, payload: Any, config: RunnableConfig | None) -> tuple[GemsSettings, dict[str, Any], str, str]:
        """Settings, run config, prompt and tenant ("" for the shared space) of one request."""
        request = payload if isinstance(payload, GemsRequest) else GemsRequest.model_validate(payload)
        chosen = {"max_rounds": request.max_rounds, "seed": request.seed, "refine_mode": request.refine_mode}
        loop = self.settings.loop.model_copy(update={k: v for k, v in chosen.items() if v is not None})
        configurable = (config or {}).get("configurable") or {}
        tenant = configurable.get("tenant")
        memory = self.settings.memory.model_copy(update={"tenant": tenant}) if tenant else self.settings.memory
        settings = self.settings.model_copy(update={"loop": loop, "memory": memory})
        why = missing_editor(settings)
        if why:
            raise NoEditor(why + " in the server's config")
        thread_id = configurable.get("thread_id") or uuid.uuid4().hex
        return settings, run_config(settings, tenant_thread(tenant, thread_id)), request.prompt, tenant or ""

    def _shown(self, tenant: str, value: Any) -> Any:
        """`value` as a client sees it; the images it names become fetchable by this tenant."""
        found: set[str] = set()
        out = _served(_jsonable(value), found)
        if self.grants is not None:
            self.grants.grant(tenant, found)
        return out

    def _public(self, values: dict[str, Any], run_cfg: dict[str, Any], tenant: str = "") -> dict[str, Any]:
        thread_id = client_thread(run_cfg["configurable"]["thread_id"])
        result = self._shown(tenant, run_result(values, thread_id=thread_id))
        # Lessons came from other runs (their text quotes those prompts): only which ones were used, and how near.
        result["lessons"] = [{"id": x.get("id"), "relevance": x.get("relevance")} for x in result.get("lessons") or []]
        result["page"] = f"/runs/{thread_id}/"  # the run drawn as a page: rounds, images, criteria ticks
        return result

    @staticmethod
    def _continuation(snapshot: Any, prompt: str, settings: GemsSettings) -> tuple[bool, dict[str, Any] | None]:
        """`continuation` for this thread, after checking that it is this prompt's (else 409)."""
        known = (snapshot.values or {}).get("prompt")
        if known is not None and known != prompt:
            raise ThreadConflict("this thread id belongs to a run with another prompt; use a new X-Thread-Id")
        return continuation(snapshot, prompt, settings)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        settings, run_cfg, prompt, tenant = self._prepare(input, config)
        with self._claim(run_cfg):
            snapshot = self.graph.get_state(run_cfg)
            pending, run_input = self._continuation(snapshot, prompt, settings)
            if pending:
                self.graph.invoke(run_input, run_cfg, context=settings)
            return self._public(self.graph.get_state(run_cfg).values, run_cfg, tenant)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        settings, run_cfg, prompt, tenant = self._prepare(input, config)
        with self._claim(run_cfg):
            snapshot = await self.graph.aget_state(run_cfg)
            pending, run_input = self._continuation(snapshot, prompt, settings)
            if pending:
                async with self._slot():
                    await self.graph.ainvoke(run_input, run_cfg, context=settings)
            values = (await self.graph.aget_state(run_cfg)).values
            return self._public(values, run_cfg, tenant)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
        yield self.invoke(input, config)

    def batch(self, inputs: list[Any], config: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        return [self.invoke(item, cfg) for item, cfg in zip(inputs, _batch_configs(config, len(inputs)), strict=True)]

    async def abatch(self, inputs: list[Any], config: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        if len(inputs) > MAX_BATCH:
            raise BatchTooLarge(f"a batch holds at most {MAX_BATCH} inputs, not {len(inputs)}; split it")
        configs = _batch_configs(config, len(inputs))
        return list(await asyncio.gather(*(self.ainvoke(i, c) for i, c in zip(inputs, configs, strict=True))))

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield `{"node": "__start__", "thread_id", "page"}`, then `{"node", "line", "update"}` as each node
        finishes (each round's images included), then `{"node": "__end__", "result"}`. `line` is for people."""

        async def single() -> AsyncIterator[Any]:
            yield input

        # Through the callback machinery, so /stream_events sees the run and its chunks.
        async for chunk in self._atransform_stream_with_config(single(), self._astream_updates, config, **kwargs):
            yield chunk

    async def _astream_updates(
        self, inputs: AsyncIterator[Any], run_manager: Any, config: RunnableConfig
    ) -> AsyncIterator[dict[str, Any]]:
        payload = [item async for item in inputs][-1]
        settings, run_cfg, prompt, tenant = self._prepare(payload, config)
        with self._claim(run_cfg):
            snapshot = await self.graph.aget_state(run_cfg)
            pending, run_input = self._continuation(snapshot, prompt, settings)
            thread_id = client_thread(run_cfg["configurable"]["thread_id"])
            page = f"/runs/{thread_id}/"
            yield {"node": "__start__", "thread_id": thread_id, "page": page, "line": f"Run page: {page}"}
            if pending:
                async with self._slot():
                    async for chunk in _isolated(
                        self.graph.astream(run_input, run_cfg, context=settings, stream_mode="updates")
                    ):
                        for node, update in chunk.items():
                            if node != "plan":
                                # Lessons quote other runs' prompts: never streamed.
                                update = {k: v for k, v in (update or {}).items() if k != "lessons"}
                                shown = self._shown(tenant, update)
                                line = progress_line(node, shown if isinstance(shown, dict) else {})
                                yield {"node": node, "line": line, "update": shown}
            values = (await self.graph.aget_state(run_cfg)).values
            result = self._public(values, run_cfg, tenant)
            yield {"node": "__end__", "line": _done_line(result).strip(), "result": result}


class _Served(RunnableBinding):  # type: ignore[no-redef]  # mypy's pydantic plugin: a field named kwargs
    """The service as LangServe serves it; `/stream_log`, which feeds the playground, streams readable text."""

    async def astream_log(  # type: ignore[override]
        self, input: Any, config: RunnableConfig | None = None, *, diff: bool = True, **options: Any
    ) -> AsyncIterator[Any]:
        async for patch in super().astream_log(input, config, diff=diff, **options):  # type: ignore[call-overload]
            yield _readable(patch) if diff and not isinstance(patch, RunLog) else patch


async def _isolated(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Iterate `stream` in a task with a fresh context.

    The graph would otherwise inherit this runnable's callbacks through a context variable, and its internal
    events carry objects (`Send`) that LangServe's /stream_events cannot serialise; clients get our chunks instead.
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=16)

    async def pump() -> None:
        try:
            async for item in stream:
                await queue.put(("item", item))
            await queue.put(("done", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            await queue.put(("error", exc))

    task = asyncio.get_running_loop().create_task(pump(), context=contextvars.Context())
    try:
        while True:
            kind, value = await queue.get()
            if kind == "done":
                break
            if kind == "error":
                raise value
            yield value
    finally:
        if not task.done():
            task.cancel()


def _batch_configs(config: Any, count: int) -> list[Any]:
    """One thread per batch item: `<header id>-<i>` when a thread id was given, fresh ids otherwise."""
    configs = config if isinstance(config, list) else [config or {}] * count
    out = []
    for i, cfg in enumerate(configs):
        cfg = dict(cfg or {})
        configurable = dict(cfg.get("configurable") or {})
        base = configurable.get("thread_id")
        configurable["thread_id"] = f"{base}-{i}" if base else uuid.uuid4().hex
        cfg["configurable"] = configurable
        out.append(cfg)
    return out


def _thread_from_header(config: dict[str, Any], request: Any) -> dict[str, Any]:
    """The thread id from `X-Thread-Id` and the tenant the guard found; nothing else from the client's config."""
    configurable: dict[str, Any] = {}
    thread = request.headers.get("x-thread-id")
    if thread:
        if not THREAD_ID.fullmatch(thread):
            from fastapi import HTTPException

            raise HTTPException(422, "X-Thread-Id: 1-128 letters, digits, '_', '.', ':' or '-'")
        configurable["thread_id"] = thread
    tenant = (request.scope.get("state") or {}).get("tenant")
    if tenant:
        configurable["tenant"] = tenant
    return {**config, "configurable": configurable}


SESSION_COOKIE = "gems_session"
SESSION_TTL_S = 12 * 3600
OPEN_PATHS = ("/health", "/signin", "/favicon.ico")
BROWSER_PAGES = ("/gems/playground", "/runs/")  # without a session these send a browser to /signin
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_BODY_BYTES = 1_000_000  # 16 prompts of 2,000 characters fit many times over
MAX_SIGNIN_BYTES = 4096  # a form with one key in it
BODY_TIMEOUT_S = 30.0  # to receive a whole body, however it trickles in
SIGNIN_ATTEMPTS = 5  # wrong keys per client ...
SIGNIN_WINDOW_S = 60.0  # ... in this many seconds; then every key it offers waits (429) until the oldest is older


def client_id(scope: dict[str, Any]) -> str:
    """Who a request comes from, for the sign-in limit: its IP address (an IPv6 client by its /64)."""
    host = str((scope.get("client") or ("unknown", 0))[0])
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class SigninLimiter:
    """At most `attempts` wrong keys per client in any `window_s` seconds; past that, every key it offers (right
    ones too, or the limit would tell which key is right) is answered 429 until its oldest failure leaves the window.
    """

    def __init__(self, attempts: int = SIGNIN_ATTEMPTS, window_s: float = SIGNIN_WINDOW_S, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.attempts, self.window_s, self.max_clients, self.clock = attempts, window_s, max_clients, clock
        self.failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        times = self.failures.get(client) or deque()
        while times and times[0] <= self.clock() - self.window_s:
            times.popleft()
        return times

    def retry_after(self, client: str) -> int:
        """Seconds this client must wait before its next key is checked; 0: check it now."""
        times = self._recent(client)
        if len(times) < self.attempts:
            return 0
        return max(1, math.ceil(times[0] + self.window_s - self.clock()))

    def failed(self, client: str) -> None:
        times = self._recent(client)
        times.append(self.clock())
        self.failures.pop(client, None)
        self.failures[client] = times  # newest last, so the oldest clients are dropped first when full
        if len(self.failures) > self.max_clients:
            self.failures.pop(next(iter(self.failures)))

    def succeeded(self, client: str) -> None:
        self.failures.pop(client, None)


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _foreign(scope: dict[str, Any], headers: dict[str, str], strict: bool) -> str | None:
    """Why a browser's state-changing request is refused as cross-site (login CSRF, CSRF), or None.

    `strict`: the request is a browser's by nature (a session cookie, the sign-in form), so it must say where it
    comes from; programs that send neither header are let through otherwise.
    """
    origin, site = headers.get("origin"), headers.get("sec-fetch-site")
    own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
    if origin is not None and origin.strip().lower() != own:
        return "cross-origin request refused: its Origin is not this server"
    if site is not None and site.strip().lower() != "same-origin":
        return "cross-site request refused (Sec-Fetch-Site is not same-origin)"
    if strict and origin is None and site is None:
        return "a browser request must carry an Origin header; programs send the key in a header instead"
    return None


def _is_json(headers: dict[str, str]) -> bool:
    return headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


class _Guard:
    """ASGI middleware in front of every route: API keys (headers or a signed-in browser's session cookie; the
    key's name is the tenant), the sign-in limit for offered keys, cross-site checks for browsers, and a bounded
    body read (size and time) before anything else sees the body.
    """

    def __init__(self, app: Any, keys: dict[str, str], limiter: SigninLimiter | None = None,
                 max_body: int = MAX_BODY_BYTES, body_timeout_s: float = BODY_TIMEOUT_S):  # fmt: skip
        self.app = app
        self.keys = keys
        self.limiter = limiter or SigninLimiter()
        self.max_body = max_body
        self.body_timeout_s = body_timeout_s
        self.sessions: dict[str, tuple[str, float]] = {}  # token -> (key name, expiry); lost on restart: sign in again

    async def _reply(self, send: Any, status: int, message: str, headers: list | None = None) -> None:
        body = json.dumps({"detail": message}).encode()
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
        await send({"type": "http.response.body", "body": body})

    def new_session(self, name: str) -> str:
        now = time.time()
        self.sessions = {t: (n, exp) for t, (n, exp) in self.sessions.items() if exp > now}
        token = secrets.token_urlsafe(32)
        self.sessions[token] = (name, now + SESSION_TTL_S)
        return token

    def _session(self, headers: dict[str, str]) -> str | None:
        """The key name of a signed-in browser's session cookie, or None."""
        cookies = SimpleCookie()
        with contextlib.suppress(CookieError):
            cookies.load(headers.get("cookie", ""))
        token = cookies[SESSION_COOKIE].value if SESSION_COOKIE in cookies else ""
        session = self.sessions.get(token)
        return session[0] if session is not None and session[1] > time.time() else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["guard"] = self  # the sign-in routes start sessions here
        path, method = scope.get("path", ""), scope.get("method", "GET")
        headers = _headers(scope)
        caller, how = None, None
        offered = offered_key(headers) if self.keys else ""
        if offered:
            wait = self.limiter.retry_after(client_id(scope))
            if wait:
                await self._reply(send, 429, f"too many wrong keys from this client; retry in {wait} s",
                                  [(b"retry-after", str(wait).encode())])  # fmt: skip
                return
            caller = key_name(self.keys, offered)
            if caller is None:
                self.limiter.failed(client_id(scope))
            else:
                how = "header"
        elif self.keys:
            caller = self._session(headers)
            how = "cookie" if caller else None
        state["caller"] = caller
        # Each key of GEMS_API_KEYS is a tenant; GEMS_API_KEY alone (named "default") keeps one shared space.
        state["tenant"] = caller if caller not in (None, "default") else None
        if self.keys and path not in OPEN_PATHS and caller is None:
            if method == "GET" and path.startswith(BROWSER_PAGES):
                head = [(b"location", b"/signin"), (b"content-length", b"0")]
                await send({"type": "http.response.start", "status": 303, "headers": head})
                await send({"type": "http.response.body", "body": b""})
                return
            await self._reply(send, 401, f"{KEY_HELP}, or sign in at /signin", [(b"www-authenticate", b"Bearer")])
            return
        # A key in a header cannot be added by another site's page: only the other requests can be forged.
        if method not in SAFE_METHODS and how != "header":
            why = _foreign(scope, headers, strict=how == "cookie" or path == "/signin")
            if why:
                await self._reply(send, 403, why)
                return
            if how == "cookie" and path.startswith("/gems/") and not _is_json(headers):
                await self._reply(send, 415, "send the body as Content-Type: application/json")
                return
        limit = MAX_SIGNIN_BYTES if path == "/signin" else self.max_body
        declared = headers.get("content-length", "")
        close = [(b"connection", b"close")]  # the rest of the body is not read: end the connection with the answer
        if declared.isdigit() and int(declared) > limit:
            await self._reply(send, 413, f"request body larger than {limit} bytes", close)
            return
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await _read_body(receive, limit)
        except TimeoutError:
            await self._reply(send, 408, f"request body not received within {self.body_timeout_s:g} s", close)
            return
        except ConnectionError:
            return  # nobody to answer
        if body is None:
            await self._reply(send, 413, f"request body larger than {limit} bytes", close)
            return
        if method == "POST" and path.startswith("/gems/"):
            problem = _json_problem(body)
            if problem:
                await self._reply(send, 400, problem)
                return
        await self.app(scope, _replay(body, receive), send)


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """The request body, counted as it arrives; None as soon as it passes `limit` bytes (the rest is never read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            raise ConnectionError("the client went away mid-body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _json_problem(body: bytes) -> str | None:
    """A one-line reason to refuse a JSON body: not JSON, nested too deep, not UTF-8 text; None if it is fine."""
    if not body:
        return None
    try:
        data = json.loads(body, parse_float=_finite, parse_constant=_no_constant)
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # lone surrogates ("\ud800") cannot be stored
    except RecursionError:
        return "request body is JSON nested too deeply"
    except UnicodeError:
        return "request body holds text that is not valid Unicode (a lone surrogate)"
    except ValueError as exc:
        return f"request body is not valid JSON: {' '.join(str(exc).split())[:120]}"
    return None


def _replay(body: bytes, receive: Any) -> Any:
    """The body already read, then the client's own channel (streaming responses listen on it for a disconnect)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


HEADER_TIMEOUT_S = 10.0  # from connecting (or the last response) to a request's complete headers
KEEP_ALIVE_S = 5  # an idle kept-alive connection
MAX_HEADER_BYTES = 16 * 1024
MAX_CONNECTIONS = 1024  # beyond this uvicorn answers 503 at once


def uvicorn_options(header_timeout_s: float = HEADER_TIMEOUT_S) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` that bound what a slow or idle client holds.

    uvicorn alone has no deadline for a request's headers: a connection that sends half a request line, or a byte
    now and then, is kept forever. This protocol closes it `header_timeout_s` after it connected or after its last
    response, however much it trickles in meanwhile.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # the headers are in; the body has its own deadline in the guard

        def on_response_complete(self) -> None:
            self._arm()  # before the next pipelined request, which may disarm it at once
            super().on_response_complete()

    return {"http": HeaderDeadline, "timeout_keep_alive": KEEP_ALIVE_S,
            "h11_max_incomplete_event_size": MAX_HEADER_BYTES, "limit_concurrency": MAX_CONNECTIONS}  # fmt: skip


SIGNIN_PAGE = """<!doctype html><meta charset="utf-8"><title>gems: sign in</title>
<style>body{{font:15px system-ui,sans-serif;margin:4em auto;max-width:24em}}input,button{{font:inherit;padding:.4em}}
input{{width:100%;box-sizing:border-box;margin:.5em 0}}.error{{color:#c33}}</style>
<h1>gems</h1><p>Sign in with your API key to use the playground and see runs.</p>{message}
<form method="post" action="/signin"><label>API key <input type="password" name="key" autocomplete="current-password"
autofocus required></label><button type="submit">Sign in</button></form>"""


def create_app(
    settings: GemsSettings | None = None,
    *,
    api_key: str | None = None,
    max_concurrent: int = 2,
    queue_timeout_s: float = 30.0,
) -> Any:
    """Build the FastAPI app (imported lazily: fastapi and langserve are the `serve` extra).

    Args:
        settings: run settings (default `load_settings()`).
        api_key: one required key; default `GEMS_API_KEYS` / `GEMS_API_KEY` (unset: no auth, for localhost use).
        max_concurrent: runs executing at once (each holds the generator; 1-2 suits one GPU).
        queue_timeout_s: how long an extra request waits for a slot before 429.

    Raises:
        ConfigError: the serve extra is missing, or a key is shorter than MIN_KEY_CHARS.
    """
    try:
        from fastapi import FastAPI, HTTPException
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
        from langserve import add_routes
    except ImportError as exc:
        raise ConfigError(f"gems serve needs the serve extra: pip install 'gems-agent[serve]' ({exc.name})") from None
    keys = {"default": api_key} if api_key else ({} if api_key is not None else api_keys_from_env())
    check_keys(keys)
    settings = settings or load_settings()

    grants = ArtifactGrants(settings.data_dir / "serve-artifacts.sqlite")
    service = GemsService(
        settings, checkpointer=None, max_concurrent=max_concurrent, queue_timeout_s=queue_timeout_s, grants=grants
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        sqlite_path = settings.data_dir / "serve-checkpoints.sqlite"
        async with open_checkpointer(settings, asynchronous=True, sqlite_path=sqlite_path) as saver:
            service.graph = build_graph(checkpointer=saver, store=open_store(settings))
            try:
                yield
            finally:
                grants.close()

    def per_request(config: dict[str, Any], request: Any) -> dict[str, Any]:
        config = _thread_from_header(config, request)
        configurable = config["configurable"]
        # A stream answers 200 before it runs, so a busy thread is refused here, while a status can still say so.
        thread = tenant_thread(configurable.get("tenant"), configurable.get("thread_id") or "")
        if request.url.path.startswith("/gems/stream") and service.busy(thread):
            raise HTTPException(409, THREAD_BUSY)
        return config

    app = FastAPI(title="gems", description="GEMS image generation agent", lifespan=lifespan)
    add_routes(
        app,
        _Served(bound=service, custom_input_type=GemsRequest, custom_output_type=dict),
        path="/gems",
        per_req_config_modifier=per_request,
        # stream_log feeds the playground.
        enabled_endpoints=["invoke", "batch", "stream", "stream_log", "stream_events", "playground", "input_schema",
                           "output_schema", "config_schema"],
    )  # fmt: skip
    store = ArtifactStore(settings.artifacts_dir)

    def artifact(request: Any) -> Any:
        """An image, to the tenant whose run showed it (to anyone where no keys are set)."""
        sha256 = request.path_params["name"].removesuffix(".png")
        try:
            path = store.path_for(sha256)
        except ArtifactError:
            raise HTTPException(404, "no such artifact (names are <sha256>.png)") from None
        if keys and not grants.allows(request.scope["state"].get("tenant") or "", sha256):
            raise HTTPException(404, "no such artifact")  # the same answer as a missing one: nothing to probe
        if not path.is_file():
            raise HTTPException(404, "no such artifact")
        return FileResponse(path, media_type="image/png")

    app.add_route("/artifacts/{name}", artifact, methods=["GET"], include_in_schema=False)

    def health(request: Any) -> Any:
        # Open to probes: liveness only. A caller with a key also learns how the server is limited.
        if not request.scope["state"].get("caller"):
            return JSONResponse({"ok": True})
        return JSONResponse({"ok": True, "auth": True, "max_concurrent": max_concurrent})

    app.add_route("/health", health, methods=["GET"], include_in_schema=False)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)  # browsers ask for one; an empty answer keeps their consoles clean

    limiter = SigninLimiter()
    app.state.signin_limiter = limiter  # tests move its clock

    async def signin(request: Any) -> Any:
        """GET: the form. POST: a right key gets a session cookie and the playground; a wrong one 401."""
        if request.method == "GET":
            return HTMLResponse(SIGNIN_PAGE.format(message="" if keys else "<p>This server needs no key.</p>"))
        guard: _Guard = request.scope["state"]["guard"]
        client = client_id(request.scope)
        wait = guard.limiter.retry_after(client)
        if wait:
            page = SIGNIN_PAGE.format(message=f'<p class="error">Too many wrong keys; try again in {wait} s.</p>')
            return HTMLResponse(page, status_code=429, headers={"retry-after": str(wait)})
        # The guard has read the body already, at most MAX_SIGNIN_BYTES of it.
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        name = key_name(guard.keys, (form.get("key") or [""])[0])
        if name is None:
            guard.limiter.failed(client)
            return HTMLResponse(SIGNIN_PAGE.format(message='<p class="error">Wrong key.</p>'), status_code=401)
        guard.limiter.succeeded(client)
        response = RedirectResponse("/gems/playground/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, guard.new_session(name), max_age=SESSION_TTL_S, path="/", httponly=True,
            samesite="strict", secure=request.url.scheme == "https",
        )  # fmt: skip
        return response

    # A plain Starlette route: the key arrives as a form field, never in a URL.
    app.add_route("/signin", signin, methods=["GET", "POST"], include_in_schema=False)

    async def run_page_route(request: Any) -> Any:
        """A run as a page, saying where it stands (running, waiting for review, stopped with an error, stopped,
        finished); only the caller's tenant's threads are found."""
        thread_id = request.path_params["thread_id"]
        if not THREAD_ID.fullmatch(thread_id):
            raise HTTPException(404, "no such run")
        tenant = (request.scope.get("state") or {}).get("tenant")
        thread = tenant_thread(tenant, thread_id)
        snapshot = await service.graph.aget_state({"configurable": {"thread_id": thread}})
        if not snapshot.values.get("prompt"):
            raise HTTPException(404, "no such run")
        # Running: a request is executing this thread now (the one-run-per-thread claim; a finished thread is never
        # run again, only answered). Otherwise the checkpoint says the rest: an interrupt waiting for review, a
        # failed task's error, a cancelled task, a result, or none of these.
        running = service.busy(thread) and bool(snapshot.next or not snapshot.values.get("final"))
        status = run_status(
            snapshot, running=running, how_to_resume=SERVE_RESUME.format(thread_id=thread_id),
            how_to_answer=SERVE_REVIEW, takes_answers=False,
        )  # fmt: skip
        result = service._shown(tenant or "", run_result(snapshot.values, thread_id=thread_id))
        return HTMLResponse(run_page(result, lambda image: f"/artifacts/{image.get('sha256', 'missing')}.png", status))

    app.add_route("/runs/{thread_id}/", run_page_route, methods=["GET"], include_in_schema=False)

    def refusal(status: int, headers: dict[str, str] | None = None) -> Any:
        async def handler(request: Any, exc: Exception) -> Any:
            return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

        return handler

    def field_errors(errors: list[Any]) -> Any:
        # FastAPI would echo each bad input back (a 52 MB prompt, 52 MB again): name the field and the rule only.
        return JSONResponse({"detail": [{k: e.get(k) for k in ("loc", "msg", "type")} for e in errors[:20]]}, 422)

    async def invalid(request: Any, exc: Any) -> Any:
        return field_errors(exc.errors())

    async def invalid_request(request: Any, exc: ValidationError) -> Any:
        # LangServe checks each /batch input against the schema itself, raising pydantic's error: a client's
        # mistake. Any other model failing to validate is the server's own fault and stays a 500.
        if exc.title != GemsRequest.__name__:
            raise exc
        return field_errors(exc.errors())

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(ValidationError, invalid_request)
    app.add_exception_handler(ThreadConflict, refusal(409))
    app.add_exception_handler(ServerBusy, refusal(429, {"retry-after": "5"}))
    app.add_exception_handler(BatchTooLarge, refusal(413))
    app.add_exception_handler(NoEditor, refusal(422))
    app.add_middleware(_Guard, keys=keys, limiter=limiter)
    return app
