"""Content-addressed image store: PNGs on disk named by their sha256, so graph state holds only references."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from gems.configs.errors import GemsError

IMAGE_REF_KEYS = ("sha256", "width", "height", "seed", "backend", "model", "steps", "guidance_scale")


class ArtifactError(GemsError, RuntimeError):
    """An artifact is missing or unreadable."""


def _is_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class ArtifactStore:
    """Stores PNG bytes as `<root>/<sha256>.png`; writing the same image twice is a no-op."""

    def __init__(self, root: str | os.PathLike[str], max_pixels: int | None = None):
        self.root = Path(root)
        self.max_pixels = max_pixels

    def path_for(self, sha256: str) -> Path:
        """Return the file path for a digest; rejects anything that is not a sha256 (no path traversal)."""
        if not _is_sha256(sha256):
            raise ArtifactError(f"not an artifact id: {sha256!r} (expected 64 lowercase hex characters)")
        path = self.root / f"{sha256}.png"
        if path.is_symlink():  # only files this store wrote; a planted link could point anywhere
            raise ArtifactError(f"artifact {sha256[:12]} is a symlink; refusing to follow it")
        return path

    def put_png(self, data: bytes) -> tuple[str, Path]:
        """Write PNG bytes atomically and return `(sha256, path)`."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest)
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            # Write then rename so a crash never leaves a truncated file under a valid name.
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        return digest, path

    def put_image(self, image: Image.Image, **meta: Any) -> dict[str, Any]:
        """Encode a PIL image as PNG, store it, and return an image reference (a plain JSON dict)."""
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return self.put_bytes(buf.getvalue(), **meta)

    def put_bytes(self, data: bytes, *, origin: str = "the generator", **meta: Any) -> dict[str, Any]:
        """Store encoded image bytes (any format PIL reads; re-encoded to PNG if needed) and return a reference.

        `origin` names where the bytes came from in errors ("the generator", "an attached image").
        """
        try:
            image = Image.open(io.BytesIO(data))  # reads the header only
        except Exception as exc:
            raise ArtifactError(f"{origin} sent bytes that are not an image ({len(data)} bytes)") from exc
        if self.max_pixels and image.width * image.height > self.max_pixels:
            raise ArtifactError(
                f"{origin} sent a {image.width}x{image.height} image, over storage.max_pixels "
                f"({self.max_pixels}); send a smaller one or raise the limit"
            )
        try:
            image.load()
        except Exception as exc:
            raise ArtifactError(f"{origin} sent bytes that are not an image ({len(data)} bytes)") from exc
        if image.format != "PNG":
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            data = buf.getvalue()
        digest, _ = self.put_png(data)
        # No file path: state and whatever serves it name images by digest only (`path_for` finds the file).
        ref = {"sha256": digest, "width": image.width, "height": image.height}
        ref.update(meta)
        return ref

    def ref_for(self, sha256: str) -> dict[str, Any]:
        """The reference of an image already stored (its size read from the file's header)."""
        try:
            with Image.open(self.path_for(sha256)) as image:
                return {"sha256": sha256, "width": image.width, "height": image.height}
        except FileNotFoundError:
            raise ArtifactError(f"artifact {sha256[:12]}… is missing from {self.root}") from None

    def read_bytes(self, ref: Mapping[str, Any] | str) -> bytes:
        """Return the PNG bytes for a reference or digest."""
        digest = ref if isinstance(ref, str) else ref["sha256"]
        path = self.path_for(digest)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"artifact {digest[:12]}… is missing from {self.root}") from None

    def open(self, ref: dict[str, Any] | str) -> Image.Image:
        image = Image.open(io.BytesIO(self.read_bytes(ref)))
        image.load()
        return image

    def data_url(self, ref: Mapping[str, Any] | str, max_side: int | None = None) -> str:
        """Return a base64 PNG data URL, downscaled so the longer side is at most `max_side`.

        Content-addressed, so the URL is cached: a round's image goes to every verifier call and, in later rounds,
        to the refiner again; each is decoded, resized and encoded once per process.
        """
        digest = ref if isinstance(ref, str) else ref["sha256"]
        self.path_for(digest)  # validate the digest before it becomes a cache key
        return _data_url(str(self.root), digest, max_side)


@functools.lru_cache(maxsize=64)
def _data_url(root: str, digest: str, max_side: int | None) -> str:
    data = ArtifactStore(root).read_bytes(digest)
    if max_side:
        opened = Image.open(io.BytesIO(data))
        if max(opened.size) > max_side:
            image = opened.copy()
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
