"""`gems serve`: the graph behind a LangServe endpoint, hardened for use beyond localhost.

Routes: `/gems/invoke`, `/gems/batch`, `/gems/stream`, `/gems/stream_log`, `/gems/stream_events`,
`/gems/playground/`; `/artifacts/<sha256>.png` for the images; `/runs/<thread>/` a run's page; `/signin`; `/health`.
A run's thread comes from the `X-Thread-Id` header (a new one otherwise): the same id continues an interrupted run
or returns the finished one, never generates twice. With `GEMS_API_KEY` (or `GEMS_API_KEYS`, `name:key,...`) set,
every route but `/health` and `/signin` needs `Authorization: Bearer <key>`, `X-API-Key: <key>`, or the session
cookie a browser gets by signing in once at `/signin`. At most `max_concurrent` runs execute at once; others wait
up to `queue_timeout_s`, then get 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.cookies import CookieError, SimpleCookie
from typing import Annotated, Any
from urllib.parse import parse_qs

from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from gems.configs import ConfigError, GemsSettings, load_settings
from gems.graph.builder import build_graph, continuation, run_config
from gems.interfaces.pages import run_page
from gems.memory.artifacts import ArtifactError, ArtifactStore
from gems.memory.checkpoint import open_checkpointer
from gems.memory.store import open_store
from gems.memory.trajectory import run_result

MAX_PROMPT_CHARS = 2000
MAX_ROUNDS_CAP = 10
THREAD_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
RUN_ROUTES = ("/invoke", "/batch", "/stream", "/stream_events", "/stream_log")


def _no_default(schema: dict[str, Any]) -> None:
    # A `"default": null` would be filled into the form and fail its own integer check.
    schema.pop("default", None)


class GemsRequest(BaseModel):
    """One image request. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="what the image must show")
    # Optional, null accepted, but no `{"type": "null"}` in the schema: the playground's form cannot draw one.
    max_rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS_CAP)] | SkipJsonSchema[None] = Field(
        None, description="attempts before the best is returned", json_schema_extra=_no_default
    )
    seed: Annotated[int, Field(ge=0)] | SkipJsonSchema[None] = Field(
        None, description="base seed for reproducible generations", json_schema_extra=_no_default
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


def _with_urls(value: Any) -> Any:
    """Add `url` (`/artifacts/<sha256>.png`) next to every image reference."""
    if isinstance(value, dict):
        out = {k: _with_urls(v) for k, v in value.items()}
        if isinstance(out.get("sha256"), str) and "path" in out:
            out["url"] = f"/artifacts/{out['sha256']}.png"
        return out
    if isinstance(value, list):
        return [_with_urls(v) for v in value]
    return value


class GemsService(Runnable[dict, dict]):
    """The Runnable LangServe serves: validates, picks the thread, runs the graph, returns JSON with image URLs."""

    def __init__(self, settings: GemsSettings, checkpointer: Any, store: Any = None):
        self.settings = settings
        self.graph = build_graph(checkpointer=checkpointer, store=store)

    def _prepare(self, payload: Any, config: RunnableConfig | None) -> tuple[GemsSettings, dict[str, Any], str]:

        request = payload if isinstance(payload, GemsRequest) else GemsRequest.model_validate(payload)
        loop = self.settings.loop.model_copy(
            update={k: v for k, v in {"max_rounds": request.max_rounds, "seed": request.seed}.items() if v is not None}
        )
        settings = self.settings.model_copy(update={"loop": loop})
        thread_id = ((config or {}).get("configurable") or {}).get("thread_id") or uuid.uuid4().hex
        return settings, run_config(settings, thread_id), request.prompt

    def _public(self, values: dict[str, Any], thread_id: str) -> dict[str, Any]:
        result = _with_urls(_jsonable(run_result(values, thread_id=thread_id)))
        result["page"] = f"/runs/{thread_id}/"  # the run drawn as a page: rounds, images, criteria ticks
        return result

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        settings, run_cfg, prompt = self._prepare(input, config)
        pending, run_input = continuation(self.graph.get_state(run_cfg), prompt)
        if pending:
            self.graph.invoke(run_input, run_cfg, context=settings)
        return self._public(self.graph.get_state(run_cfg).values, run_cfg["configurable"]["thread_id"])

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        settings, run_cfg, prompt = self._prepare(input, config)
        pending, run_input = continuation(await self.graph.aget_state(run_cfg), prompt)
        if pending:
            await self.graph.ainvoke(run_input, run_cfg, context=settings)
        values = (await self.graph.aget_state(run_cfg)).values
        return self._public(values, run_cfg["configurable"]["thread_id"])

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
        yield self.invoke(input, config)

    def batch(self, inputs: list[Any], config: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        return [self.invoke(item, cfg) for item, cfg in zip(inputs, _batch_configs(config, len(inputs)), strict=True)]

    async def abatch(self, inputs: list[Any], config: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        configs = _batch_configs(config, len(inputs))
        return list(await asyncio.gather(*(self.ainvoke(i, c) for i, c in zip(inputs, configs, strict=True))))

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield `{"node", "update"}` as each node finishes (each round's image included), then the result."""

        async def single() -> AsyncIterator[Any]:
            yield input

        # Through the callback machinery, so /stream_events sees the run and its chunks.
        async for chunk in self._atransform_stream_with_config(single(), self._astream_updates, config, **kwargs):
            yield chunk

    async def _astream_updates(
        self, inputs: AsyncIterator[Any], run_manager: Any, config: RunnableConfig
    ) -> AsyncIterator[dict[str, Any]]:
        payload = [item async for item in inputs][-1]
        settings, run_cfg, prompt = self._prepare(payload, config)
        pending, run_input = continuation(await self.graph.aget_state(run_cfg), prompt)
        if pending:
            async for chunk in _isolated(
                self.graph.astream(run_input, run_cfg, context=settings, stream_mode="updates")
            ):
                for node, update in chunk.items():
                    yield {"node": node, "update": _with_urls(_jsonable(update or {}))}
        values = (await self.graph.aget_state(run_cfg)).values
        yield {"node": "__end__", "result": self._public(values, run_cfg["configurable"]["thread_id"])}


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
    """LangServe drops client-sent thread ids (the graph declares no configurable fields); take it from a header."""
    config = dict(config)
    configurable = dict(config.get("configurable") or {})
    thread = request.headers.get("x-thread-id")
    if thread:
        configurable["thread_id"] = thread[:128]
    config["configurable"] = configurable
    return config


SESSION_COOKIE = "gems_session"
SESSION_TTL_S = 12 * 3600
OPEN_PATHS = ("/health", "/signin", "/favicon.ico")
BROWSER_PAGES = ("/gems/playground", "/runs/")  # without a session these send a browser to /signin


def api_keys_from_env() -> dict[str, str]:
    """`GEMS_API_KEYS` (`name:key,name:key`) or `GEMS_API_KEY` (one key named `default`); empty: no auth.

    Raises:
        ConfigError: an entry of `GEMS_API_KEYS` is not `name:key`.
    """
    keys: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in os.environ.get("GEMS_API_KEYS", "").split(","))):
        name, sep, key = entry.partition(":")
        if not (sep and name.strip() and key.strip()):
            raise ConfigError("GEMS_API_KEYS must be comma-separated name:key pairs (e.g. alice:k1,bob:k2)")
        keys[name.strip()] = key.strip()
    single = os.environ.get("GEMS_API_KEY")
    if single and single not in keys.values():
        keys["default"] = single
    return keys


class _Guard:
    """ASGI middleware: API keys (headers or a signed-in browser's session cookie) and a cap on concurrent runs."""

    def __init__(self, app: Any, keys: dict[str, str], max_concurrent: int, queue_timeout_s: float):
        self.app = app
        self.keys = keys
        self.sessions: dict[str, tuple[str, float]] = {}  # token -> (key name, expiry); lost on restart: sign in again
        self.slots = asyncio.Semaphore(max_concurrent)
        self.queue_timeout_s = queue_timeout_s

    async def _reply(self, send: Any, status: int, message: str, headers: list | None = None) -> None:
        import json

        body = json.dumps({"detail": message}).encode()
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
        await send({"type": "http.response.body", "body": body})

    def key_name(self, offered: str) -> str | None:
        """The name of the key `offered` matches (compared in constant time), or None."""
        found = None
        for name, key in self.keys.items():
            if offered and hmac.compare_digest(offered.encode(), key.encode()):
                found = name
        return found

    def new_session(self, name: str) -> str:
        now = time.time()
        self.sessions = {t: (n, exp) for t, (n, exp) in self.sessions.items() if exp > now}
        token = secrets.token_urlsafe(32)
        self.sessions[token] = (name, now + SESSION_TTL_S)
        return token

    def _authorised(self, scope: dict[str, Any]) -> bool:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        offered = headers.get("x-api-key") or ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            offered = offered or auth[7:].strip()
        if offered:
            return self.key_name(offered) is not None
        cookies = SimpleCookie()
        with contextlib.suppress(CookieError):
            cookies.load(headers.get("cookie", ""))
        token = cookies[SESSION_COOKIE].value if SESSION_COOKIE in cookies else ""
        session = self.sessions.get(token)
        return session is not None and session[1] > time.time()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["guard"] = self  # the sign-in routes start sessions here
        path = scope.get("path", "")
        if self.keys and path not in OPEN_PATHS and not self._authorised(scope):
            if scope.get("method") == "GET" and path.startswith(BROWSER_PAGES):
                head = [(b"location", b"/signin"), (b"content-length", b"0")]
                await send({"type": "http.response.start", "status": 303, "headers": head})
                await send({"type": "http.response.body", "body": b""})
                return
            await self._reply(
                send, 401, "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>', "
                "or sign in at /signin",
                [(b"www-authenticate", b"Bearer")],
            )  # fmt: skip
            return
        if not path.endswith(RUN_ROUTES):
            await self.app(scope, receive, send)
            return
        try:
            await asyncio.wait_for(self.slots.acquire(), timeout=self.queue_timeout_s)
        except TimeoutError:
            await self._reply(send, 429, "too many runs in progress; retry later", [(b"retry-after", b"5")])
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.release()


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
    """
    try:
        from fastapi import FastAPI, HTTPException
        from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
        from langserve import add_routes
    except ImportError as exc:
        raise ConfigError(f"gems serve needs the serve extra: pip install 'gems-agent[serve]' ({exc.name})") from None
    settings = settings or load_settings()
    keys = {"default": api_key} if api_key else ({} if api_key is not None else api_keys_from_env())

    service = GemsService(settings, checkpointer=None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        sqlite_path = settings.data_dir / "serve-checkpoints.sqlite"
        async with open_checkpointer(settings, asynchronous=True, sqlite_path=sqlite_path) as saver:
            service.graph = build_graph(checkpointer=saver, store=open_store(settings))
            yield

    app = FastAPI(title="gems", description="GEMS image generation agent", lifespan=lifespan)
    add_routes(
        app,
        service.with_types(input_type=GemsRequest, output_type=dict),  # type: ignore[arg-type]
        path="/gems",
        per_req_config_modifier=_thread_from_header,
        # stream_log feeds the playground.
        enabled_endpoints=["invoke", "batch", "stream", "stream_log", "stream_events", "playground", "input_schema",
                           "output_schema", "config_schema"],
    )  # fmt: skip
    store = ArtifactStore(settings.artifacts_dir)

    @app.get("/artifacts/{name}")
    def artifact(name: str) -> Any:
        try:
            path = store.path_for(name.removesuffix(".png"))
        except ArtifactError:
            raise HTTPException(404, "no such artifact (names are <sha256>.png)") from None
        if not path.is_file():
            raise HTTPException(404, "no such artifact")
        return FileResponse(path, media_type="image/png")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "ok": True,
            "mllm": settings.mllm.model,
            "generator": settings.generator.model_label or settings.generator.backend,
            "auth": bool(keys),
            "max_concurrent": max_concurrent,
        }

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)  # browsers ask for one; an empty answer keeps their consoles clean

    async def signin(request: Any) -> Any:
        """GET: the form. POST: a right key gets a session cookie and the playground; a wrong one 401."""
        if request.method == "GET":
            return HTMLResponse(SIGNIN_PAGE.format(message="" if keys else "<p>This server needs no key.</p>"))
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        guard: _Guard = request.scope["state"]["guard"]
        name = guard.key_name((form.get("key") or [""])[0])
        if name is None:
            return HTMLResponse(SIGNIN_PAGE.format(message='<p class="error">Wrong key.</p>'), status_code=401)
        response = RedirectResponse("/gems/playground/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, guard.new_session(name), max_age=SESSION_TTL_S, path="/", httponly=True,
            samesite="strict", secure=request.url.scheme == "https",
        )  # fmt: skip
        return response

    # A plain Starlette route: the key arrives as a form field, never in a URL.
    app.add_route("/signin", signin, methods=["GET", "POST"], include_in_schema=False)

    @app.get("/runs/{thread_id}/", response_class=HTMLResponse)
    async def run_page_route(thread_id: str) -> str:
        if not THREAD_ID.fullmatch(thread_id):
            raise HTTPException(404, "no such run")
        snapshot = await service.graph.aget_state({"configurable": {"thread_id": thread_id}})
        if not snapshot.values.get("prompt"):
            raise HTTPException(404, "no such run")
        result = run_result(snapshot.values, thread_id=thread_id)
        return run_page(result, lambda image: f"/artifacts/{image.get('sha256', 'missing')}.png")

    app.add_middleware(_Guard, keys=keys, max_concurrent=max_concurrent, queue_timeout_s=queue_timeout_s)
    return app
