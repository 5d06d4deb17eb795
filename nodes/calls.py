"""Node I/O as values, so one node body serves LangGraph's sync and async APIs.

A node's steps are a generator: it yields the calls it needs (`Ask`, `Converse`, `Render`, `Edit`, `Blocking`) and
gets each result back (or the call's exception thrown in). `drive` runs the calls inline for `graph.invoke`;
`adrive` awaits them for `graph.ainvoke`, so hundreds of runs in flight share one event loop instead of holding a
thread each while they wait on the MLLM or the generator. `node(steps)` wraps the pair as the Runnable the graph
adds.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable, RunnableLambda
from langgraph.config import get_config
from langgraph.runtime import Runtime, get_runtime

from gems.configs import GeneratorSettings, MLLMSettings, context_settings
from gems.memory.journal import record_call
from gems.nodes.generators import GeneratorError, Rendered, get_editor, get_generator
from gems.nodes.mllm import MLLMError, Reply, get_mllm

# Sync calls with a deadline run here, so a server that answers one byte at a time cannot hold a run forever.
_sync_calls = ThreadPoolExecutor(max_workers=32, thread_name_prefix="gems-call")
_journal_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gems-journal")
_BACKOFF_S = 8.0  # the most one retry waits (tenacity's and the openai client's backoff caps)


def _mllm_deadline(mllm: MLLMSettings) -> float:
    return mllm.timeout_s * (mllm.max_retries + 1) + _BACKOFF_S * mllm.max_retries


def _mllm_overdue(mllm: MLLMSettings, seconds: float) -> MLLMError:
    return MLLMError(
        f"the MLLM endpoint {mllm.base_url} gave no complete answer within {seconds:g}s "
        f"(mllm.timeout_s {mllm.timeout_s:g} x {mllm.max_retries + 1} tries); check the server or raise mllm.timeout_s"
    )


@dataclass(frozen=True)
class Ask:
    """One system + user exchange with the MLLM; the result is a `Reply`."""

    mllm: MLLMSettings
    system: str
    user: str | list[dict[str, Any]]

    def deadline(self) -> tuple[float, Exception] | None:
        seconds = _mllm_deadline(self.mllm)
        return seconds, _mllm_overdue(self.mllm, seconds)

    def run(self) -> Reply:
        return get_mllm(self.mllm).ask(self.system, self.user)

    async def arun(self) -> Reply:
        return await get_mllm(self.mllm).aask(self.system, self.user)


@dataclass(frozen=True)
class Converse:
    """A whole conversation, optionally with tools bound; the result is the `AIMessage`."""

    mllm: MLLMSettings
    messages: list[Any]
    tools: list[Any] = field(default_factory=list)

    def deadline(self) -> tuple[float, Exception] | None:
        seconds = _mllm_deadline(self.mllm)
        return seconds, _mllm_overdue(self.mllm, seconds)

    def run(self) -> Any:
        return get_mllm(self.mllm).converse(self.messages, self.tools or None)

    async def arun(self) -> Any:
        return await get_mllm(self.mllm).aconverse(self.messages, self.tools or None)


@dataclass(frozen=True)
class Render:
    """One image per seed for one prompt; the result is a list of `Rendered` in seed order."""

    generator: GeneratorSettings
    prompt: str
    seeds: list[int]

    def deadline(self) -> tuple[float, Exception] | None:
        return _remote_deadline(self.generator, len(self.seeds), "generator")

    def run(self) -> list[Rendered]:
        generator = get_generator(self.generator)
        # Local pipelines render all candidates in one batch; remote backends take one request per image.
        batch = getattr(generator, "render_many", None)
        if batch is not None and len(self.seeds) > 1:
            return list(batch(self.prompt, self.seeds))
        return [generator.render(self.prompt, seed) for seed in self.seeds]

    async def arun(self) -> list[Rendered]:
        return await _per_seed(self.generator, get_generator, "arender", self.run, (self.prompt,), self.seeds)


async def _per_seed(
    settings: GeneratorSettings,
    client_for: Callable[[GeneratorSettings], Any],
    method: str,
    run: Callable[[], list[Rendered]],
    args: tuple[Any, ...],
    seeds: list[int],
) -> list[Rendered]:
    """An image call under `ainvoke`: remote backends get one awaited request per seed, sent together (so a batching
    server, gems serve-generator, can render them in one call); in-process pipelines and clients without the async
    `method` run `run` off the event loop (loading included)."""
    if settings.backend == "diffusers":
        return await asyncio.to_thread(run)
    call = getattr(client_for(settings), method, None)
    if call is None:
        return await asyncio.to_thread(run)
    return list(await asyncio.gather(*(call(*args, seed) for seed in seeds)))


def _remote_deadline(g: GeneratorSettings, images: int, section: str) -> tuple[float, Exception] | None:
    if g.backend == "diffusers":  # computed here, in this process: nothing to wait on but the GPU
        return None
    seconds = (g.timeout_s * (g.max_retries + 1) + _BACKOFF_S * g.max_retries) * images
    return seconds, GeneratorError(
        f"the {section} {g.url} gave no complete image within {seconds:g}s "
        f"({section}.timeout_s {g.timeout_s:g} x {g.max_retries + 1} tries); check the server"
    )


@dataclass(frozen=True)
class Edit:
    """One edited image per seed of `image` (encoded bytes) by `instruction`; the result is a list of `Rendered`.

    `editor`: concrete settings from `editor_settings` (backend diffusers or openai).
    """

    editor: GeneratorSettings
    image: bytes
    instruction: str
    seeds: list[int]

    def deadline(self) -> tuple[float, Exception] | None:
        return _remote_deadline(self.editor, len(self.seeds), "editor")

    def run(self) -> list[Rendered]:
        editor = get_editor(self.editor)
        batch = getattr(editor, "edit_many", None)
        if batch is not None:
            return list(batch(self.image, self.instruction, self.seeds))
        return [editor.edit(self.image, self.instruction, seed) for seed in self.seeds]

    async def arun(self) -> list[Rendered]:
        return await _per_seed(self.editor, get_editor, "aedit", self.run, (self.image, self.instruction), self.seeds)


@dataclass(frozen=True)
class Blocking:
    """Blocking work that is not an endpoint call (a store lookup, file reads); async runs it in a worker thread."""

    fn: Callable[[], Any]

    def deadline(self) -> tuple[float, Exception] | None:
        return None

    def run(self) -> Any:
        return self.fn()

    async def arun(self) -> Any:
        return await asyncio.to_thread(self.fn)


Call = Ask | Converse | Render | Edit | Blocking
Steps = Generator[Call, Any, dict[str, Any]]


def _run_sync(call: Call) -> Any:
    limit = call.deadline()
    if limit is None:
        return call.run()
    seconds, overdue = limit
    future = _sync_calls.submit(contextvars.copy_context().run, call.run)  # tracing keeps its parent run
    try:
        return future.result(timeout=seconds)
    except FutureTimeout:
        raise overdue from None


async def _run_async(call: Call) -> Any:
    limit = call.deadline()
    if limit is None:
        return await call.arun()
    seconds, overdue = limit
    try:
        return await asyncio.wait_for(call.arun(), timeout=seconds)
    except TimeoutError:
        raise overdue from None


Journal = Callable[[str, int], None]


def _journal_entry(call: Call) -> tuple[str, int] | None:
    """What a call adds to the thread's journal: (`mllm`, 1) or (`generator`, images); nothing for Blocking work."""
    if isinstance(call, Ask | Converse):
        return "mllm", 1
    if isinstance(call, Render | Edit):
        return "generator", len(call.seeds)
    return None


def _journal_for(runtime: Runtime[Any]) -> Journal | None:
    """Append each endpoint call to the thread's journal before it goes out (see memory/journal.py)."""
    thread_id = (get_config().get("configurable") or {}).get("thread_id")
    if not thread_id:
        return None

    @functools.cache  # resolved on the first call only: most node runs make none or one
    def data_dir() -> Path:
        return context_settings(runtime.context).data_dir

    def journal(kind: str, count: int) -> None:
        record_call(data_dir(), str(thread_id), kind, count)

    return journal


def drive(steps: Steps, journal: Journal | None = None) -> dict[str, Any]:
    """Run a node's steps with blocking calls; returns the node's state update."""
    try:
        call = next(steps)
        while True:
            try:
                entry = _journal_entry(call)
                if journal is not None and entry is not None:
                    journal(*entry)
                result = _run_sync(call)
            except Exception as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(result)
    except StopIteration as stop:
        return stop.value


async def adrive(steps: Steps, journal: Journal | None = None) -> dict[str, Any]:
    """Run a node's steps with awaited calls; returns the node's state update."""
    try:
        call = next(steps)
        while True:
            try:
                entry = _journal_entry(call)
                if journal is not None and entry is not None:
                    # A file append, off the event loop on a writer of its own (the default executor is shared
                    # with every Blocking step, and would make hundreds of runs queue for a few microseconds each).
                    await asyncio.get_running_loop().run_in_executor(_journal_writer, journal, *entry)
                result = await _run_async(call)
            except Exception as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(result)
    except StopIteration as stop:
        return stop.value


def node(steps: Callable[[Any, Runtime[Any]], Steps], name: str | None = None) -> Runnable[Any, dict[str, Any]]:
    """The graph node for a steps function `(state, runtime) -> Steps`: sync under invoke, async under ainvoke."""

    def run_sync(state: Any) -> dict[str, Any]:
        runtime = get_runtime()
        return drive(steps(state, runtime), _journal_for(runtime))

    async def run_async(state: Any) -> dict[str, Any]:
        runtime = get_runtime()
        return await adrive(steps(state, runtime), _journal_for(runtime))

    label = name or steps.__name__.removesuffix("_steps")
    run_sync.__name__ = run_async.__name__ = label
    run_sync.__doc__ = run_async.__doc__ = steps.__doc__
    return RunnableLambda(run_sync, afunc=run_async, name=label)
