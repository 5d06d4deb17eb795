"""The calls nodes make to models and generators, and how an async node also runs under `graph.invoke`.

Nodes are `async def`. Every endpoint call goes through one function here (`ask`, `converse`, `render`, `edit`):
it is written to the thread's call journal before it goes out, it has a wall-clock deadline, and it is a coroutine,
so a deadline that fires or a run that is cancelled stops the call itself (its socket closed, no thread left
reading). `node(afunc)` pairs a node with a sync body that runs it on the background loop
(`gems.memory.aio.run_blocking`), the way LangGraph's prebuilt pairs `func` and `afunc`: `invoke` and `ainvoke`
run the same code.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from langchain_core.messages import AIMessage
from langgraph._internal._runnable import RunnableCallable
from langgraph.config import get_config
from langgraph.runtime import get_runtime

from gems.configs import GeneratorSettings, MLLMSettings, context_settings
from gems.configs.errors import shown_url
from gems.memory.aio import run_blocking, within
from gems.memory.journal import record_call
from gems.nodes.generators import GeneratorError, Rendered, get_editor, get_generator
from gems.nodes.mllm import Reply, get_mllm

T = TypeVar("T")
_journal_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gems-journal")
_BACKOFF_S = 8.0  # the most one retry waits (tenacity's backoff cap)


async def ask(mllm: MLLMSettings, system: str, user: str | list[dict[str, Any]]) -> Reply:
    """One system + user exchange with the MLLM (deadline: `mllm.timeout_s` per try, retries included)."""
    await _journal("mllm", 1)
    return await get_mllm(mllm).ask(system, user)


async def converse(mllm: MLLMSettings, messages: list[Any], tools: list[Any] | None = None) -> AIMessage:
    """A whole conversation with the MLLM, tools bound when given; returns its `AIMessage`."""
    await _journal("mllm", 1)
    return await get_mllm(mllm).converse(messages, tools)


async def render(generator: GeneratorSettings, prompt: str, seeds: list[int]) -> list[Rendered]:
    """One image of `prompt` per seed, in seed order; remote backends have a deadline, local pipelines none."""
    await _journal("generator", len(seeds))
    backend = await _loaded(get_generator, generator)
    seconds, overdue = _deadline(generator, len(seeds), "generator")
    return await within(seconds, backend.render(prompt, seeds), overdue)


async def edit(editor: GeneratorSettings, image: bytes, instruction: str, seeds: list[int]) -> list[Rendered]:
    """One edit of `image` (encoded bytes) by `instruction` per seed; `editor` from `editor_settings`."""
    await _journal("generator", len(seeds))
    backend = await _loaded(get_editor, editor)
    seconds, overdue = _deadline(editor, len(seeds), "editor")
    return await within(seconds, backend.edit(image, instruction, seeds), overdue)


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """File and store work that blocks: in a worker thread, so the event loop keeps serving other runs."""
    return await asyncio.to_thread(fn, *args)


async def _loaded(get: Callable[[GeneratorSettings], T], settings: GeneratorSettings) -> T:
    # The first call may load a pipeline (seconds to minutes): off the event loop.
    return get(settings) if settings.backend != "diffusers" else await asyncio.to_thread(get, settings)


def _deadline(g: GeneratorSettings, images: int, section: str) -> tuple[float | None, Callable[[], Exception]]:
    if g.backend == "diffusers":  # computed here, in this process: nothing to wait on but the GPU
        return None, lambda: GeneratorError(f"the {section} timed out")
    seconds = (g.timeout_s * (g.max_retries + 1) + _BACKOFF_S * g.max_retries) * images
    return seconds, lambda: GeneratorError(
        f"the {section} {shown_url(g.url)} gave no complete image within {seconds:g}s "
        f"({section}.timeout_s {g.timeout_s:g} x {g.max_retries + 1} tries); check the server"
    )


async def _journal(kind: str, count: int) -> None:
    """Append the call to the thread's journal before it goes out (see memory/journal.py); nothing outside a run."""
    try:
        thread_id = (get_config().get("configurable") or {}).get("thread_id")
        context = get_runtime().context
    except RuntimeError:  # called outside a graph run (a unit test, a bench baseline)
        return
    if not thread_id:
        return
    data_dir = context_settings(context).data_dir
    # A file append, on a writer of its own: the default executor is shared with every blocking step.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(_journal_writer, record_call, data_dir, str(thread_id), kind, count)


def node(afunc: Callable[..., Coroutine[Any, Any, Any]], name: str | None = None) -> RunnableCallable:
    """The graph node for an async node function: `ainvoke` awaits it, `invoke` runs it on the background loop."""

    @functools.wraps(afunc)  # the same signature, so LangGraph injects `runtime` into both bodies
    def func(*args: Any, **kwargs: Any) -> Any:
        return run_blocking(afunc(*args, **kwargs))

    return RunnableCallable(func, afunc, name=name or afunc.__name__, trace=False)
