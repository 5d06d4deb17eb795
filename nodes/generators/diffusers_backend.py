"""Local generation with any diffusers text-to-image pipeline (`DiffusionPipeline.from_pretrained`)."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from langgraph.config import get_stream_writer

from gems.configs import GeneratorSettings
from gems.nodes.generators.base import GeneratorError, Rendered

_pipelines: dict[tuple[str, str, str, bool], Any] = {}
_pipelines_lock = threading.Lock()
T = TypeVar("T")


class Cancelled(GeneratorError):
    """The awaiting run was cancelled; the pipeline stopped at the end of a denoising step."""


Progress = Callable[[dict[str, Any]], None]


def progress_writer() -> Progress | None:
    """Where loading and denoising progress goes: the custom stream of the graph run this call belongs to, as
    `{"event": "generator", "stage": "loading" | "loaded" | "step", ...}`; None outside a run (a service, a test)."""
    try:
        writer = get_stream_writer()
    except (RuntimeError, KeyError):
        return None
    return lambda event: writer({"event": "generator", **event})


def _clip(text: str, width: int) -> str:
    """`text` on one line, at most `width` characters, cut at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    head = text[: width - 1]
    return (head[: head.rfind(" ")] if head.rfind(" ") > width // 2 else head) + "…"


async def off_loop(work: Callable[[threading.Event], T]) -> T:
    """Run `work(cancel)` in a worker thread; if the awaiting task is cancelled, set `cancel` so the pipeline stops at
    its next step instead of rendering on for nobody (a thread cannot be killed, but it can be asked to stop)."""
    cancel = threading.Event()
    try:
        return await asyncio.to_thread(work, cancel)
    except asyncio.CancelledError:
        cancel.set()
        raise


WEIGHT_FILES = ("*.safetensors", "*.bin")
NO_WEIGHTS = "no weight files (*.safetensors or *.bin)"
# model_index.json classes that hold no weights of their own
_WEIGHTLESS = ("Tokenizer", "TokenizerFast", "Scheduler", "Processor", "FeatureExtractor")


def model_folder(model: str) -> Path:
    """A model value as a folder path, `~` expanded where it can be (`~nosuchuser/x` stays as written)."""
    try:
        return Path(model).expanduser()
    except RuntimeError:
        return Path(model)


def is_local_path(model: str) -> bool:
    """Whether a model value names a folder on this machine rather than a hub id (`org/name` has a slash too):
    it exists here, or it is written as a path (`/`, `./`, `../`, `~`, a Windows separator)."""
    if model in (".", "..") or model.startswith(("/", "./", "../", "~")) or os.path.isabs(model):
        return True
    if os.sep != "/" and os.sep in model:
        return True
    try:
        return model_folder(model).exists()
    except OSError:  # a name too long to be a path here
        return False


# .bin files a training run leaves beside a model that hold no weights of it
_NOT_WEIGHTS = {"training_args.bin", "optimizer.bin", "scheduler.bin", "rng_state.bin", "scaler.bin"}


def _weight_files(folder: Path) -> list[Path]:
    found = (f for pattern in WEIGHT_FILES for f in folder.glob(pattern))
    return [f for f in found if f.is_file() and f.name not in _NOT_WEIGHTS]


def _has_weights(folder: Path) -> bool:
    return bool(_weight_files(folder))


def damaged_safetensors(path: Path) -> bool:
    """Whether a .safetensors file is not whole (random bytes, a copy cut short): its header does not read, or the
    tensors it lists do not end where the file does. Reads the header only."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or length > size - 8 or length > 2**28:
                return True
            header = json.loads(f.read(length))
        ends = [t["data_offsets"][1] for name, t in header.items() if name != "__metadata__"]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return True
    return max(ends, default=0) != size - 8 - length


def _damaged(folder: Path, where: str) -> list[str]:
    bad = sorted(f.name for f in folder.glob("*.safetensors") if f.is_file() and damaged_safetensors(f))
    if not bad:
        return []
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return [f"a damaged {bad[0]}{more} in {where} (cut short, or not a safetensors file)"]


def _missing_shards(folder: Path, where: str) -> list[str]:
    """The weight shards an index in `folder` names that are not there (a copy that stopped half way). An index
    none of whose shards is here, beside weights of another format, is that format's, left out of the download
    (`--include "*.safetensors"`)."""
    lacks: list[str] = []
    suffixes = {f.suffix for f in _weight_files(folder)}
    for index in sorted(folder.glob("*.index.json")):
        try:
            names = set((json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}).values())
        except (OSError, ValueError, AttributeError):
            continue
        missing = sorted(n for n in names if isinstance(n, str) and not (folder / n).is_file())
        other_format = suffixes - {Path(n).suffix for n in missing}
        if missing and (len(missing) < len(names) or not other_format):
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            lacks.append(f"no {missing[0]}{more} in {where} ({index.name} names it)")
    return lacks


def _weights_lacking(folder: Path, where: str) -> list[str]:
    if not _has_weights(folder):
        return [f"{NO_WEIGHTS} in {where}"]
    return _missing_shards(folder, where) + _damaged(folder, where)


def folder_lacks(folder: Path, diffusers: bool) -> str | None:
    """What a local model folder lacks to load, in words ("no such folder", "no config.json in the folder",
    "no weight files (*.safetensors or *.bin) in unet/", ...); None when it looks whole. Reads weight files'
    headers only."""
    try:
        if not folder.exists():
            return "no such folder"
    except OSError:  # a name too long to be a path
        return "no such folder"
    if not folder.is_dir():
        return "a file, not a model folder"
    marker = "model_index.json" if diffusers else "config.json"
    if not (folder / marker).is_file():
        return f"no {marker} in the folder"
    if not diffusers:
        return ", ".join(_weights_lacking(folder, "the folder")) or None
    try:
        index = json.loads((folder / marker).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"an unreadable {marker} in the folder"
    lacks: list[str] = []
    for name, value in sorted(index.items()) if isinstance(index, dict) else []:
        if name.startswith("_") or not (isinstance(value, list) and len(value) == 2 and all(value)):
            continue  # metadata, or a component left out (safety_checker: [null, null])
        part = folder / name
        if not part.is_dir():
            lacks.append(f"no {name}/ in the folder ({marker} names it)")
        elif (part / "config.json").is_file() and not str(value[1]).endswith(_WEIGHTLESS):
            lacks += _weights_lacking(part, f"{name}/")
    return ", ".join(lacks) or None


def _pick_device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def loaded_once_key(model: str, place: str) -> tuple[str, str]:
    """What names one copy of a model in a process's cache: a local folder by its resolved path (`./m`, `m/` and a
    symlink are one folder), a device as CUDA counts it ('cuda' is the current device, cuda:0 by default)."""
    import torch

    same = str(model_folder(model).resolve()) if is_local_path(model) else model
    return same, f"cuda:{torch.cuda.current_device()}" if place == "cuda" else place


def _pick_dtype(requested: str, device: str):
    import torch

    if device == "cpu":
        # Half precision on CPU is slow or unsupported for many ops.
        return torch.float32
    if requested == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[requested]


def load_pipeline(model: str, dtype: str = "auto", device: str = "auto", cpu_offload: bool = False) -> Any:
    """Load (once per process) and return a diffusers pipeline for a hub id or a local folder."""
    device = _pick_device(device)
    key = (*loaded_once_key(model, device), dtype, cpu_offload)
    with _pipelines_lock:
        if key in _pipelines:
            return _pipelines[key]
        from transformers.utils import logging as transformers_logging

        # Quiet while importing and loading: transformers notes (e.g. "requires torchvision") about processors
        # the pipeline never uses would land between the CLI's progress lines.
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        report = progress_writer()
        started = time.perf_counter()
        if report is not None:
            report({"stage": "loading", "model": model, "device": device})
        from safetensors import SafetensorError  # a damaged weight file (diffusers passes some through unwrapped)

        try:
            import torch  # noqa: F401  (import errors should surface here, not mid-call)
            from diffusers import DiffusionPipeline
            from diffusers.utils import logging as diffusers_logging

            diffusers_logging.disable_progress_bar()
            transformers_logging.disable_progress_bar()
            pipe = DiffusionPipeline.from_pretrained(model, dtype=_pick_dtype(dtype, device))
        except (OSError, ValueError, SafetensorError) as exc:
            if is_local_path(model):  # a folder here: what it lacks, never hub advice
                detail = folder_lacks(model_folder(model), diffusers=True) or _clip(str(exc), 160)
                fix = "set generator.model to a local folder with the whole model (one saved by save_pretrained)"
            else:
                detail = _clip(str(exc), 160)
                fix = f"download it first (hf download {model}) or set generator.model to a local folder"
            raise GeneratorError(f"cannot load diffusers model {model!r}: {detail}; {fix}") from exc
        finally:
            transformers_logging.set_verbosity(verbosity)
        if cpu_offload and device != "cpu":
            pipe.enable_model_cpu_offload()
        else:
            pipe = pipe.to(device)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        pipe._gems_lock = threading.Lock()  # one pipeline runs one call at a time
        pipe._gems_device = device
        _pipelines[key] = pipe
        if report is not None:
            report({"stage": "loaded", "model": model, "device": device, "seconds": time.perf_counter() - started})
        return pipe


class DiffusersGenerator:
    """Renders with a cached diffusers pipeline; the pipeline is shared by every run in the process."""

    backend = "diffusers"

    def __init__(self, settings: GeneratorSettings, pipe: Any = None):
        """`pipe`: an already built pipeline-like callable (benchmarks pass latency models); default: load `model`."""
        self.settings = settings
        self.model = settings.model or ""
        if pipe is None:
            pipe = load_pipeline(self.model, settings.dtype, settings.device, settings.cpu_offload)
        if not hasattr(pipe, "_gems_lock"):
            pipe._gems_lock = threading.Lock()
            pipe._gems_device = "cpu"
        self.pipe = pipe
        self._accepted = set(inspect.signature(self.pipe.__call__).parameters)

    def _call_kwargs(self, prompt: str | list[str], seed: int, **overrides: Any) -> dict[str, Any]:
        import torch

        s = self.settings
        wanted: dict[str, Any] = {
            "prompt": prompt,
            "width": s.width,
            "height": s.height,
            "num_inference_steps": s.steps,
            "guidance_scale": s.guidance_scale,
            "negative_prompt": s.negative_prompt,
            **s.call_kwargs,
            **{k: v for k, v in overrides.items() if v is not None},
        }
        kwargs = {k: v for k, v in wanted.items() if v is not None and k in self._accepted}
        unknown = sorted(k for k in s.call_kwargs if k not in self._accepted)
        if unknown:
            raise GeneratorError(
                f"{type(self.pipe).__name__} does not accept generator.call_kwargs {unknown}; remove them"
            )
        gen_device = "cpu" if self.pipe._gems_device == "mps" else self.pipe._gems_device
        kwargs["generator"] = torch.Generator(gen_device).manual_seed(seed)
        return kwargs

    async def render(self, prompt: str, seeds: list[int]) -> list[Rendered]:
        """`render_many` off the event loop (loading the pipeline included); a cancel stops it at the next step."""
        return await off_loop(lambda cancel: self.render_many(prompt, seeds, cancel))

    def render_many(self, prompt: str, seeds: list[int], cancel: threading.Event | None = None) -> list[Rendered]:
        """Render one image per seed in a single batched pipeline call (one seeded generator per image)."""
        import torch

        if len(seeds) > 1 and "num_images_per_prompt" not in self._accepted:
            return [self.render_many(prompt, [seed], cancel)[0] for seed in seeds]
        kwargs = self._call_kwargs(prompt, seeds[0])
        if len(seeds) > 1:
            kwargs["generator"] = [torch.Generator(kwargs["generator"].device).manual_seed(s) for s in seeds]
            kwargs["num_images_per_prompt"] = len(seeds)
        return self._run(kwargs, seeds, cancel)

    def render_prompts(self, prompts: list[str], seeds: list[int], **overrides: Any) -> list[Rendered]:
        """One pipeline call for several prompts, image i from prompt i with its own generator seeded `seeds[i]`.

        `overrides` (width, height, num_inference_steps, guidance_scale, negative_prompt) apply to the whole call:
        the generator service groups requests that agree on them. A batched image equals its seed rendered alone.
        """
        import torch

        kwargs = self._call_kwargs(list(prompts), seeds[0], **overrides)
        device = kwargs["generator"].device
        kwargs["generator"] = [torch.Generator(device).manual_seed(s) for s in seeds]
        if isinstance(kwargs.get("negative_prompt"), str):
            kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * len(prompts)
        return self._run(kwargs, seeds)

    def _on_step_end(
        self, cancel: threading.Event | None, report: Progress | None, task: str, steps: int | None
    ) -> Callable[..., dict[str, Any]]:
        """diffusers' `callback_on_step_end`: stop when cancelled, else report the step done."""

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"generation cancelled after step {step + 1}")
            if report is not None:
                # The scheduler's count when the pipeline knows it (strength or custom timesteps change it).
                total = getattr(pipe, "num_timesteps", None) or steps
                report({"stage": "step", "task": task, "model": self.model, "step": step + 1, "steps": total})
            return tensors

        return on_step_end

    def _run(self, kwargs: dict[str, Any], seeds: list[int], cancel: threading.Event | None = None) -> list[Rendered]:
        report = progress_writer()
        if (cancel is not None or report is not None) and "callback_on_step_end" in self._accepted:
            task = "edit" if "image" in kwargs else "generate"
            kwargs["callback_on_step_end"] = self._on_step_end(cancel, report, task, kwargs.get("num_inference_steps"))
        try:
            with self.pipe._gems_lock:
                if cancel is not None and cancel.is_set():  # cancelled while waiting for the pipeline
                    raise Cancelled("generation cancelled before it started")
                started = time.perf_counter()
                images = self.pipe(**kwargs).images
                busy = time.perf_counter() - started
        except GeneratorError:
            raise
        except Exception as exc:
            detail = _clip(str(exc), 200)
            raise GeneratorError(f"diffusers pipeline {self.model!r} failed: {type(exc).__name__}: {detail}") from exc
        rendered = []
        for image, seed in zip(images, seeds, strict=True):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            meta = {
                "backend": self.backend,
                "model": self.model,
                "seed": seed,
                "steps": kwargs.get("num_inference_steps"),
                "guidance_scale": kwargs.get("guidance_scale"),
                "busy_s": busy / len(seeds),
            }
            rendered.append(Rendered(data=buf.getvalue(), meta=meta))
        return rendered
