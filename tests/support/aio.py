"""Run a backend's coroutine from a sync test, the way gems' own sync callers do (`run_blocking`)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from gems.memory.aio import run_blocking


def one_image(coro: Coroutine[Any, Any, list[Any]]) -> Any:
    """The first item of the list a backend call returns (one seed in, one image out)."""
    return run_blocking(coro)[0]
