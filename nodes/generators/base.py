"""What every generator backend shares: the `Generator` protocol, its `Rendered` result and `GeneratorError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from gems.configs import GemsError


class GeneratorError(GemsError, RuntimeError):
    """The generator failed; the message is one line saying what to fix."""


@dataclass
class Rendered:
    """Encoded image bytes from a backend plus what produced them."""

    data: bytes
    meta: dict[str, Any] = field(default_factory=dict)


class Generator(Protocol):
    """What every backend implements: one coroutine, so a deadline or a cancel stops the call itself."""

    backend: str

    async def render(self, prompt: str, seeds: list[int]) -> list[Rendered]:
        """One image of `prompt` per seed, in seed order (backends that cannot seed record seed None).

        Local pipelines render the seeds in one batch; remote backends send one request per seed, together.
        """
        ...
