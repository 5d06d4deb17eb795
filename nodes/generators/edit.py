"""Image editors behind one interface: `edit(image, instruction, seed) -> Rendered` (refine_mode edit | auto).

Backends: `diffusers` (an image-conditioned pipeline: Qwen-Image-Edit-2511, FLUX.1 Kontext, FLUX.2 [klein] with a
reference image, InstructPix2Pix...) and `openai` (`/v1/images/edits`, multipart, answered with `b64_json`:
OpenAI's gpt-image models, vLLM-Omni, `gems serve-generator`). `editor.backend: generator` reuses the generator's
own pipeline or server (see `presets.editor_settings`).
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from typing import Any, Protocol

from gems.configs import GeneratorSettings
from gems.configs.errors import shown_url
from gems.configs.loading import cache_key
from gems.nodes.generators.base import GeneratorError, Rendered
from gems.nodes.generators.diffusers_backend import DiffusersGenerator, off_loop
from gems.nodes.generators.openai_backend import OpenAIImagesGenerator


class Editor(Protocol):
    """What every edit backend implements: one coroutine, so a deadline or a cancel stops the call itself."""

    backend: str

    async def edit(self, image: bytes, instruction: str, seeds: list[int]) -> list[Rendered]:
        """Edit the encoded `image` as `instruction` says, one result per seed (None recorded where it cannot be)."""
        ...


class DiffusersEditor(DiffusersGenerator):
    """A diffusers pipeline that takes an input image (`image=`); shares the process-wide pipeline cache."""

    def __init__(self, settings: GeneratorSettings, pipe: Any = None):
        super().__init__(settings, pipe)
        if "image" not in self._accepted:
            raise GeneratorError(
                f"{type(self.pipe).__name__} ({self.model!r}) takes no input image, so it cannot edit; "
                "point editor.model at an edit model (e.g. editor.preset qwen-image-edit-2511 or flux-kontext)"
            )

    async def edit(self, image: bytes, instruction: str, seeds: list[int]) -> list[Rendered]:
        """`edit_many` off the event loop; a cancel stops it at the next step."""
        return await off_loop(lambda cancel: self.edit_many(image, instruction, seeds, cancel=cancel))

    def edit_many(
        self, image: bytes, instruction: str, seeds: list[int], cancel: threading.Event | None = None, **overrides: Any
    ) -> list[Rendered]:
        """One pipeline call per seed (edit pipelines differ in how they batch; one at a time always works).

        `overrides` (width, height, num_inference_steps, guidance_scale, negative_prompt) apply to every call.
        """
        from PIL import Image

        try:
            picture = Image.open(io.BytesIO(image)).convert("RGB")
        except Exception as exc:
            raise GeneratorError(f"the image to edit cannot be read ({len(image)} bytes): {exc}") from exc
        out = []
        for seed in seeds:
            kwargs = self._call_kwargs(instruction, seed, **overrides)
            kwargs["image"] = picture
            out.extend(self._run(kwargs, [seed], cancel))
        for rendered in out:
            rendered.meta["edit"] = True
        return out


class OpenAIImagesEditor(OpenAIImagesGenerator):
    """`POST {url}/images/edits` with the image as a multipart file; open servers also get seed, steps, guidance."""

    def __init__(self, settings: GeneratorSettings):
        if not settings.url:
            raise GeneratorError("the openai editor has no url: set editor.url (base URL ending in /v1)")
        if not settings.model:
            raise GeneratorError("the openai editor has no model: set editor.model")
        super().__init__(settings)
        self.url = settings.url.rstrip("/") + "/images/edits"

    @staticmethod
    def _multipart(body: dict[str, Any], image: bytes) -> dict[str, Any]:
        """The generation body as form fields (numbers and objects as text, as curl sends them) plus the image."""
        form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items() if v is not None}
        return {"data": form, "files": {"image": ("image.png", image, "image/png")}}

    async def edit(self, image: bytes, instruction: str, seeds: list[int]) -> list[Rendered]:
        """One request per seed, sent together."""
        return list(await asyncio.gather(*(self._edit_one(image, instruction, seed) for seed in seeds)))

    async def _edit_one(self, image: bytes, instruction: str, seed: int) -> Rendered:
        body = self._body(instruction, seed)
        started = time.perf_counter()
        data = await self._image(f"image edit endpoint {shown_url(self.url)}", **self._multipart(body, image))
        return self._edited(data, body, time.perf_counter() - started)

    def _edited(self, data: bytes, body: dict[str, Any], busy: float) -> Rendered:
        rendered = self._rendered(data, body, busy)
        rendered.meta["edit"] = True
        return rendered


_cache: dict[str, Editor] = {}
_cache_lock = threading.Lock()


def get_editor(resolved: GeneratorSettings) -> Editor:
    """The process-wide editor for concrete settings (from `editor_settings`); a pipeline loads once."""
    key = cache_key(resolved)
    with _cache_lock:
        editor = _cache.get(key)
        if editor is None:
            if resolved.backend == "diffusers":
                editor = DiffusersEditor(resolved)
            elif resolved.backend == "openai":
                editor = OpenAIImagesEditor(resolved)
            else:
                raise GeneratorError(f"editor backend {resolved.backend!r} cannot edit; use diffusers or openai")
            _cache[key] = editor
        return editor
