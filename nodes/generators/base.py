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
    """What every backend implements."""

    backend: str

    def render(self, prompt: str, seed: int) -> Rendered:
        """Render one image for `prompt` with `seed` (backends that cannot seed record seed None)."""
        ...
