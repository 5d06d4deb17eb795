"""The Agent Server's own routes (`langgraph.json` -> `http.app`): a run's images and pages, from the same server.

- `GET /artifacts/<sha256>.png?t=&e=&s=`: an image, for a signed link only (see `gems.memory.links`): chat messages
  carry such links, since a browser's `<img>` sends no API key. A bare, altered, expired or other tenant's link
  gets 403, an unknown image 404.
- Every route (the API's too): bodies are bounded, and a thread runs one run at a time (`ServerPolicy`).
- `GET /runs/<thread>/`: a run as a page (every round's image, criteria ticks, experiences, the chosen image) and
  where it stands: running ("running, round k", the only page that refreshes itself), waiting for review (what,
  and how to answer), stopped with an error (its one line) or cancelled (and how to resume), finished. `GET
  /runs/`: the caller's runs with the same statuses. Both take a signed link (the final message links its run) or
  the server's API key (`X-Api-Key` / `Authorization: Bearer`). The status comes from the server's own API
  (in-process: the thread's `busy`/`interrupted`/`error`) and the checkpoint (interrupts, failed tasks).

Nothing served names a path on the server. The routes read the run from the server's own checkpointer
(`gems.memory.checkpoint.server_checkpointer`), so they work with SQLite and Postgres alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from gems.configs import GemsSettings, UsageError
from gems.configs.loading import settings_from_env
from gems.graph.builder import build_graph
from gems.interfaces.keys import api_keys_from_env, key_name, offered_key
from gems.interfaces.pages import RunStatus, render_template, run_page, run_status, task_errors
from gems.memory.artifacts import ArtifactError, ArtifactStore
from gems.memory.checkpoint import server_checkpointer
from gems.memory.links import artifact_url, check, run_url, tenant_of, url_secret
from gems.memory.trajectory import run_result
from gems.nodes.chat import Links, linked_attachments

log = logging.getLogger(__name__)
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
REFUSED = "this link is missing its signature, was altered, has expired or is another tenant's"
KEY_OR_LINK = "send the server's API key (X-Api-Key or Authorization: Bearer) or open a link a run gave you"


def _caller(request: Request, kind: str, subject: str) -> str | None:
    """The tenant a request speaks for: from a signed link, else from an API key; None when neither holds."""
    signed = check(request.app.state.secret, kind, subject, dict(request.query_params))
    if signed is not None:
        return signed
    if kind == "artifact":
        return None  # images only by link: an <img> cannot send a key, and a key must not unlock every image
    keys = api_keys_from_env()
    if not keys:
        return ""  # no keys configured: local use, one tenant
    headers = {k.lower(): v for k, v in request.headers.items()}
    name = key_name(keys, offered_key(headers))
    return None if name is None else tenant_of(name)


async def artifact(request: Request) -> Response:
    name = request.path_params["name"]
    sha = name.removesuffix(".png")
    if _caller(request, "artifact", sha) is None:
        return JSONResponse({"detail": REFUSED}, status_code=403)
    settings: GemsSettings = request.app.state.settings
    try:
        path = ArtifactStore(settings.artifacts_dir).path_for(sha)
    except ArtifactError:
        return JSONResponse({"detail": "no such image"}, status_code=404)
    if not path.is_file():
        return JSONResponse({"detail": "no such image"}, status_code=404)
    # Content-addressed: the bytes behind a name never change.
    return FileResponse(path, media_type="image/png", headers={"cache-control": "private, max-age=86400"})


async def run(request: Request) -> Response:
    thread_id = request.path_params["thread_id"]
    tenant = _caller(request, "run", thread_id)
    if tenant is None:
        return JSONResponse({"detail": f"{REFUSED}; {KEY_OR_LINK}"}, status_code=403)
    snapshot = await _snapshot(request, thread_id)
    values = dict(snapshot.values or {})
    if not values.get("prompt") or (values.get("owner") or "") != tenant:
        return JSONResponse({"detail": "no such run"}, status_code=404)
    known = await _threads_known(request, [thread_id])
    status = await _status(request, thread_id, snapshot, known.get(thread_id))
    result = run_result(values, thread_id=thread_id)
    secret = request.app.state.secret
    page = run_page(result, lambda image: artifact_url(secret, str(image.get("sha256")), tenant), status)
    return HTMLResponse(page)


async def runs(request: Request) -> Response:
    tenant = _caller(request, "runs", "")
    if tenant is None:
        return JSONResponse({"detail": f"{REFUSED}; {KEY_OR_LINK}"}, status_code=403)
    own = await _own_runs(request, tenant)
    known = await _threads_known(request, [thread_id for thread_id, _ in own])
    listed = []
    for thread_id, snapshot in own:
        values = snapshot.values or {}
        status = await _status(request, thread_id, snapshot, known.get(thread_id))
        listed.append(
            {
                "href": run_url(request.app.state.secret, thread_id, tenant),
                "prompt": values.get("prompt") or "",
                "status": status.label,
                "kind": status.kind,
                "rounds": len(values.get("rounds") or []),
            }
        )
    return HTMLResponse(render_template("runs.html.j2", runs=listed, tenant=tenant or "local"))


RESUME = "To resume it from its last checkpoint, start a run on this thread with no input (input: null)."
ANSWER = (
    'Answer with a run on this thread whose command is {"resume": <answer>}; Agent Chat UI shows this review as a card.'
)


async def _status(request: Request, thread_id: str, snapshot: Any, thread: dict[str, Any] | None) -> RunStatus:
    """Where a run stands: the Agent Server's thread status (`busy` while a run is pending or executing) with the
    checkpoint's interrupts and failed tasks; a thread `error` the checkpoint does not explain, and a cancelled last
    run, are asked of the server (rare, one call each)."""
    if thread is None:  # the server could not say: the checkpoint alone
        return run_status(snapshot, running=None, how_to_resume=RESUME, how_to_answer=ANSWER)
    state = thread.get("status")
    failed, stopped = task_errors(snapshot)
    asked = any(getattr(t, "interrupts", None) for t in snapshot.tasks or ())
    error, cancelled = None, False
    if state == "error" and not failed:
        whole = await _api(request, lambda api: api.threads.get(thread_id))
        error = (whole or {}).get("error") or "the server recorded no message"
    elif state == "interrupted" and not (failed or stopped or asked):  # steps left, nothing in the checkpoint says why
        last = await _api(request, lambda api: api.runs.list(thread_id, limit=1))
        cancelled = bool(last) and last[0].get("status") == "interrupted"  # a run's status after runs.cancel
    return run_status(
        snapshot, running=state == "busy", how_to_resume=RESUME, how_to_answer=ANSWER, error=error,
        cancelled=cancelled,
    )  # fmt: skip


async def _threads_known(request: Request, thread_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each thread's record as the Agent Server keeps it (status), in one in-process call; {} when it cannot say
    (this app outside an Agent Server)."""
    thread_ids = [t for t in thread_ids if _UUID.fullmatch(t)]  # the API's thread ids; one other would fail them all
    if not thread_ids:
        return {}
    found = await _api(
        request, lambda api: api.threads.search(ids=thread_ids, select=["thread_id", "status"], limit=len(thread_ids))
    )
    return {str(t["thread_id"]): t for t in found or []}


async def _api(request: Request, call: Any) -> Any:
    """`call(client)` with the Agent Server's own API, in-process (`get_client()` without a URL: no network, no
    auth, as the server's own code calls it); None when it fails."""
    try:
        client = request.app.state.api
        if client is None:
            from langgraph_sdk import get_client

            client = request.app.state.api = get_client(api_key=None)
        return await call(client)
    except Exception as exc:  # a page still shows what the checkpoint holds
        log.warning("the Agent Server's API did not answer a run page's question: %s", exc)
        return None


async def _snapshot(request: Request, thread_id: str) -> Any:
    graph = request.app.state.graph
    return await graph.aget_state({"configurable": {"thread_id": thread_id}})


async def _own_runs(request: Request, tenant: str, limit: int = 200) -> list[tuple[str, Any]]:
    """The tenant's threads, newest first, with the latest checkpoint of each (the checkpointer knows every thread)."""
    saver = request.app.state.saver
    seen: dict[str, None] = {}
    async for item in saver.alist(None, limit=5000):
        thread = item.config["configurable"]["thread_id"]
        if thread not in seen and not item.config["configurable"].get("checkpoint_ns"):
            seen[thread] = None
    out = []
    for thread in seen:
        snapshot = await _snapshot(request, thread)
        values = snapshot.values or {}
        if values.get("prompt") and (values.get("owner") or "") == tenant:
            out.append((thread, snapshot))
        if len(out) >= limit:
            break
    return out


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings = settings_from_env()
    app.state.settings = settings
    app.state.secret = url_secret(settings.data_dir)
    app.state.api = None  # the Agent Server's own API, in-process, made on first use (see `_api`)
    async with server_checkpointer() as saver:
        app.state.saver = saver
        app.state.graph = build_graph(checkpointer=saver)
        yield


MAX_BODY_BYTES = 20_000_000  # a request with a few attached photos fits; a flood does not
_THREAD_RUN = re.compile(r"^/threads/[^/]+/runs(/stream|/wait)?/?$")
_ANY_RUN = re.compile(r"^(/threads/[^/]+)?/runs(/stream|/wait|/batch|/crons)?/?$")
_STATE = re.compile(r"^/threads/[^/]+/state/?$")
# What a client may write into a thread's state (`POST /threads/{id}/state`, a run's `command.update`): a review's
# answers. Everything else (owner, rounds, images, the run's options and counters) is the server's to write.
CLIENT_STATE = frozenset({"criteria", "current_prompt", "reviewer_prompt"})


class Refused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class ServerPolicy:
    """ASGI middleware for every route of the server (langgraph.json `http.app` middleware is global).

    - A request without a valid key (when keys are set) passes untouched: the API's auth answers 401 before it
      reads the body, so a flood from nobody costs nothing.
    - Bodies are read with a byte limit, counted as they arrive (413 past it).
    - One run per thread at a time: a run created on a thread without a multitask strategy (or with `enqueue`)
      gets `reject`, so a second request while one runs is answered 409 instead of queueing a second run.
    - Images attached to a run's messages are stored as files and replaced by signed links before the run is
      created, so no checkpoint, history or stream ever holds base64; anything else inline (a PDF) is refused, 422.
    - State writes (`POST /threads/{id}/state`, `command.update`) may hold only a review's answers (403 otherwise):
      a run's owner, rounds, images, options and counters are the server's.
    """

    def __init__(self, app: Any, max_body: int = MAX_BODY_BYTES):
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        keys = api_keys_from_env()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        caller = key_name(keys, offered_key(headers)) if keys else "anonymous"
        if caller is None:
            await self.app(scope, receive, send)
            return
        body, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await JSONResponse({"detail": f"request body larger than {self.max_body} bytes"}, 413)(
                    scope, receive, send
                )
                return
            body.append(chunk)
            if not message.get("more_body"):
                break
        try:
            data = await asyncio.to_thread(self._rewritten, scope.get("path", ""), b"".join(body), caller)
        except Refused as exc:
            await JSONResponse({"detail": exc.detail}, exc.status)(scope, receive, send)
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # a streaming response listens here for the client going away
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}

        kept = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        kept.append((b"content-length", str(len(data)).encode()))
        await self.app({**scope, "headers": kept}, replay, send)

    def _rewritten(self, path: str, data: bytes, caller: str) -> bytes:
        """The body as the API should see it, or `Refused`."""
        run, state = _ANY_RUN.match(path), _STATE.match(path)
        search = path.rstrip("/") == "/store/items/search"
        if not (run or state or search) or not data:
            return data
        try:
            payload = json.loads(data)
        except ValueError:
            return data  # the API answers malformed JSON itself
        if not isinstance(payload, dict):
            return data
        if search and not isinstance(payload.get("namespace_prefix"), list):
            raise Refused(422, "namespace_prefix is required: the namespace to search, a list of strings")
        if state:
            _only_review_answers(payload.get("values"))
        if run:
            command = payload.get("command")
            if isinstance(command, dict):
                _only_review_answers(command.get("update"))
            if _THREAD_RUN.match(path) and payload.get("multitask_strategy") in (None, "enqueue"):
                payload["multitask_strategy"] = "reject"
            inputs = payload.get("input")
            if isinstance(inputs, dict) and isinstance(inputs.get("messages"), list):
                inputs["messages"] = self._linked(inputs["messages"], caller)
        return json.dumps(payload).encode()

    @staticmethod
    def _linked(messages: list[Any], caller: str) -> list[Any]:
        settings = settings_from_env()
        store = ArtifactStore(settings.artifacts_dir, max_pixels=settings.storage.max_pixels)
        links = Links(url_secret(settings.data_dir), tenant_of(caller), None)
        try:
            return [
                {**m, "content": linked_attachments(m.get("content"), store, links)} if isinstance(m, dict) else m
                for m in messages
            ]
        except (UsageError, ArtifactError) as exc:
            raise Refused(413 if "max_pixels" in str(exc) else 422, str(exc)) from None


def _only_review_answers(values: Any) -> None:
    if values is None:
        return
    updates = [values] if isinstance(values, dict) else values if isinstance(values, list) else None
    if updates is None:
        raise Refused(422, "a state update is an object of state keys")
    for update in updates:
        given = set(update) if isinstance(update, dict) else {str(update)}
        if isinstance(update, list | tuple) and update:  # LangGraph's [key, value] pairs
            given = {str(update[0])}
        refused = sorted(given - CLIENT_STATE)
        if refused:
            raise Refused(
                403,
                f"state keys {', '.join(refused)} are the server's; a client may write only "
                f"{', '.join(sorted(CLIENT_STATE))} (answer a review with a resume command)",
            )


app = Starlette(
    routes=[
        Route("/artifacts/{name}", artifact, methods=["GET"]),
        Route("/runs/", runs, methods=["GET"]),
        Route("/runs/{thread_id}/", run, methods=["GET"]),
    ],
    middleware=[Middleware(ServerPolicy)],
    lifespan=lifespan,
)
