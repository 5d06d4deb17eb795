"""Async plumbing every layer shares: sync callers wait on one background event loop; one client per event loop.

Every endpoint call in gems is a coroutine, so a deadline or a cancel stops the call itself: the task is cancelled,
its socket closed, and no thread is left reading. Sync callers (`graph.invoke`, the CLI's store commands, the
embedding function a sync store calls) hand their coroutine to `run_blocking`, which runs it on a daemon event loop
kept for the process, so connection pools live across calls and nothing blocks interpreter exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop for sync callers, started on first use in a daemon thread."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="gems-io", daemon=True).start()
            _loop = loop
        return _loop


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to the end from sync code and return its result (or raise its exception).

    The coroutine runs on the background loop with the caller's context variables (LangGraph's config and runtime
    included). If the waiting thread is interrupted (Ctrl-C), the task is cancelled before the exception goes on.
    Called on the background loop itself it would wait forever, so that is refused.
    """
    loop = background_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("run_blocking called from the background loop; await the coroutine instead")
    future = asyncio.run_coroutine_threadsafe(coro, loop)  # copies this thread's context into the task
    try:
        return future.result()
    finally:
        future.cancel()  # a no-op once done; otherwise the call stops at its next await


def run_main(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)` for a program's main work (Ctrl-C cancels it); in a thread that already runs a loop
    (a notebook, Playwright's sync API), the same in a thread of its own. The loop's clients are closed before it
    ends (`aclose_loop_clients`), so no connection outlives it, a cancelled call's included."""

    async def main_work() -> T:
        try:
            return await coro
        finally:
            await aclose_loop_clients()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main_work())
    result: list[T] = []
    error: list[BaseException] = []

    def main() -> None:
        try:
            result.append(asyncio.run(main_work()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=main, name="gems-main")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


_every: weakref.WeakSet[PerLoop[Any]] = weakref.WeakSet()


async def aclose_loop_clients() -> None:
    """Close every client made for the running event loop (`PerLoop`), before the loop ends.

    A call cancelled mid-answer (a deadline, a sibling's failure) can leave its connection open in the pool until
    the client closes; a short-lived loop (`asyncio.run` around `graph.ainvoke`) should call this at its end.
    """
    loop = asyncio.get_running_loop()
    for per_loop in list(_every):
        value = per_loop.pop(loop)
        if value is None:
            continue
        client = getattr(value, "http_async_client", None) or value  # a LangChain client's own pool
        closing = getattr(client, "aclose", None)
        if closing is not None:
            with contextlib.suppress(Exception):
                await closing()


class PerLoop(Generic[T]):
    """One object per running event loop, made by `factory` on first use there.

    Async HTTP pools (httpx, the openai client) belong to the loop that opened them; a process may run several
    loops (the background loop, a server's, `asyncio.run` in a script), and each gets its own client.
    """

    def __init__(self, factory: Callable[[], T]):
        self._factory = factory
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        _every.add(self)

    def pop(self, loop: asyncio.AbstractEventLoop) -> T | None:
        with self._lock:
            return self._by_loop.pop(loop, None)

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        with self._lock:
            value = self._by_loop.get(loop)
            if value is None:
                value = self._by_loop[loop] = self._factory()
            return value


async def within(seconds: float | None, awaitable: Awaitable[T], overdue: Callable[[], Exception]) -> T:
    """Await `awaitable` for at most `seconds` (None: no limit); past it, cancel it and raise `overdue()`."""
    if seconds is None:
        return await awaitable
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            return await awaitable
    except TimeoutError:
        if limit.expired():
            raise overdue() from None
        raise  # the call's own timeout, with its own message
