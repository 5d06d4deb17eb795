"""`gems serve-generator`: the configured diffusers model as a Ray Serve application.

Three deployments: `GemsGenerator` replicas each hold one pipeline copy (one GPU each where the cluster has GPUs)
and batch the image jobs that reach them with `serve.batch`: jobs that agree on size, steps, guidance and negative
prompt share one pipeline call, each image with its own seeded generator, so a batched image equals its seed
rendered alone. `GemsGeneratorGateway` is the HTTP ingress: the reference GEMS protocol (`POST /generate?prompt=` ->
PNG) and OpenAI's `POST /v1/images/generations` (`b64_json`), so gems' `http` and `openai` backends and the
reference GEMS code use it unchanged, plus `POST /v1/images/edits` (multipart) when the pipeline takes an input
image (FLUX.2 [klein], Qwen-Image-Edit, FLUX.1 Kontext), for `editor.backend: openai`; `/health` reports replicas,
queue depth and counters (to key holders; liveness to anyone). `GemsGeneratorCounters` adds up what every replica
did. Ray places, restarts and scales the replicas; the one list kept here is a replica's jobs waiting for its
pipeline (see `PipelineReplica.render_batch`). Every body, file part, image and parameter is bounded before work.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime through Serve's ingress.
import asyncio
import base64
import io
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle
from starlette.requests import ClientDisconnect

from gems.configs import ConfigError, GeneratorSettings
from gems.interfaces.keys import KEY_HELP, key_name, offered_key
from gems.nodes.generators import GeneratorError, effective_settings
from gems.nodes.generators.diffusers_backend import DiffusersGenerator  # torch and diffusers load on first use
from gems.nodes.generators.edit import DiffusersEditor

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # a TypedDict that exists only for type checkers

APP_NAME = "gems-generator"
REPLICA = "GemsGenerator"
MAX_PROMPT_CHARS = 4000
MAX_IMAGES = 16
MAX_SIDE = 4096  # the bounds of generator.width/height
MAX_STEPS = 500  # the bound of generator.steps
MAX_GUIDANCE = 100.0
REPLICA_RETRIES = 2  # a job whose replica died is sent again (Ray routes it to a live one)
CONCURRENT_BATCHES = 64  # Serve batches in a replica at once; they merge at the pipeline (see render_batch)
MAX_BODY_BYTES = 2**20  # JSON bodies, and any body sent to the other routes
MAX_IMAGE_BYTES = 32 * 2**20  # one file part of an edit
MAX_EDIT_BODY_BYTES = MAX_IMAGE_BYTES + MAX_BODY_BYTES
MAX_FIELD_BYTES = 64 * 2**10  # one text field of an edit form
MAX_FORM_PARTS = 32
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # an image to edit, read from its header before anything decodes it
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # what OpenAI's edits take; other PIL decoders never see client bytes
# Serve's proxy lets any client lift the request timeout or keep a request running after it disconnects with
# these headers; the gateway refuses requests that carry them.
SERVE_OVERRIDE_HEADERS = ("x-request-timeout-seconds", "x-request-disconnect-disabled")


class _Job(BaseModel):
    """One image: what the replica renders. Jobs that agree on `group()` share a pipeline call."""

    prompt: str
    seed: int
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None

    def overrides(self) -> dict[str, Any]:
        """The pipeline arguments this job sets beside its prompt and seed."""
        return {
            "width": self.width,
            "height": self.height,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "negative_prompt": self.negative_prompt,
        }

    def group(self) -> tuple[Any, ...]:
        return tuple(self.overrides().values())


def _check_image(data: bytes) -> None:
    """Refuse an image from its header, before anything decodes it: 422 not PNG/JPEG/WebP, 413 over MAX_PIXELS."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as picture:  # reads the header only
            width, height = picture.size
    except Image.DecompressionBombError:  # PIL's own cap (far above ours) trips inside open()
        width = height = MAX_SIDE + 1
    except (UnidentifiedImageError, OSError, ValueError):
        raise HTTPException(422, "the uploaded file is not a PNG, JPEG or WebP image") from None
    if width * height > MAX_PIXELS:
        raise HTTPException(413, f"the image has more than {MAX_SIDE}x{MAX_SIDE} pixels")


@serve.deployment(name="GemsGeneratorCounters", num_replicas=1, ray_actor_options={"num_cpus": 0})
class Counters:
    """Totals over replicas (each reports its own running totals after every batch)."""

    def __init__(self) -> None:
        self.by_replica: dict[str, dict[str, float]] = {}

    def report(self, replica: str, totals: dict[str, float]) -> None:
        self.by_replica[replica] = totals

    def snapshot(self) -> dict[str, Any]:
        keys = ("images", "pipeline_calls", "batches", "busy_s")
        totals = {key: sum(t.get(key, 0) for t in self.by_replica.values()) for key in keys}
        totals["largest_batch"] = max((t.get("largest_batch", 0) for t in self.by_replica.values()), default=0)
        return {**totals, "by_replica": self.by_replica}


@serve.deployment(name=REPLICA, health_check_period_s=10)
class PipelineReplica:
    """One pipeline copy; concurrent jobs are batched into as few pipeline calls as their settings allow."""

    def __init__(
        self,
        settings_json: str,
        max_batch_size: int,
        batch_wait_s: float,
        counters: DeploymentHandle,
        pipeline_factory: Callable[[], Any] | None = None,
    ):
        settings = GeneratorSettings.model_validate_json(settings_json)
        self.generator = DiffusersGenerator(settings, pipe=pipeline_factory() if pipeline_factory else None)
        self.editor: DiffusersEditor | None = None
        self.cannot_edit: str | None = None
        self.render_batch.set_max_batch_size(max_batch_size)
        self.render_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.max_batch_size = max_batch_size
        self.pipeline = asyncio.Lock()
        self.waiting: list[tuple[_Job, asyncio.Future[dict[str, Any]]]] = []
        self.counters = counters
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.totals: dict[str, float] = {
            "images": 0,
            "pipeline_calls": 0,
            "batches": 0,
            "largest_batch": 0,
            "busy_s": 0,
        }

    async def render(self, job: dict[str, Any]) -> dict[str, Any]:
        return await self.render_batch(_Job.model_validate(job))

    # Serve forms a batch as soon as its wait ends and only then waits for the pipeline, so while one call runs the
    # next requests pile up as many small batches. Letting batches run at once and having whichever takes the
    # pipeline render everything waiting by then fills the calls. bench/throughput.py runs both side by side:
    # Serve's batching alone (max_concurrent_batches=1) made 3-4x the pipeline calls at 0.62x the prompts per hour.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, max_concurrent_batches=CONCURRENT_BATCHES)
    async def render_batch(self, jobs: list[_Job]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        mine = [(job, loop.create_future()) for job in jobs]
        self.waiting.extend(mine)
        while not all(future.done() for _, future in mine):
            async with self.pipeline:  # one pipeline call at a time in this replica
                if not all(future.done() for _, future in mine):
                    taken = self.waiting[: self.max_batch_size]
                    del self.waiting[: len(taken)]
                    results = await self.render_jobs([job for job, _ in taken])
                    for (_, future), result in zip(taken, results, strict=True):
                        future.set_result(result)
                    await self.counters.report.remote(self.replica, dict(self.totals))
        return [future.result() for _, future in mine]

    async def render_jobs(self, jobs: list[_Job]) -> list[dict[str, Any]]:
        """Render `jobs` in one pipeline call per group of equal settings; a result (or error) per job, in order."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.group(), []).append(i)
        results: list[dict[str, Any]] = [{} for _ in jobs]
        for indices in groups.values():
            group = [jobs[i] for i in indices]
            prompts, seeds = [job.prompt for job in group], [job.seed for job in group]
            try:
                rendered = await asyncio.to_thread(
                    self.generator.render_prompts, prompts, seeds, **group[0].overrides()
                )
                for i, item in zip(indices, rendered, strict=True):
                    results[i] = {"png": item.data, "seed": item.meta["seed"], "busy_s": item.meta["busy_s"]}
                    self.totals["busy_s"] += item.meta["busy_s"]
            except GeneratorError as exc:
                for i in indices:
                    results[i] = {"error": str(exc)}
            self.totals["pipeline_calls"] += 1
            self.totals["largest_batch"] = max(self.totals["largest_batch"], len(group))
        self.totals["images"] += len(jobs)
        self.totals["batches"] += 1
        return results

    async def edit(self, job: dict[str, Any]) -> dict[str, Any]:
        """Edit one image (`job["image"]`, encoded) by `job["prompt"]`; edits are not batched."""
        image = job.pop("image")
        try:
            _check_image(image)  # the gateway checked it too; a handle caller may not have
        except HTTPException as exc:
            return {"error": exc.detail, "status": exc.status_code}
        if self.editor is None and self.cannot_edit is None:
            try:
                self.editor = DiffusersEditor(self.generator.settings, pipe=self.generator.pipe)
            except GeneratorError as exc:
                self.cannot_edit = str(exc)
        if self.editor is None:
            return {"error": self.cannot_edit, "status": 400}
        spec = _Job.model_validate(job)
        async with self.pipeline:
            try:
                (item,) = await asyncio.to_thread(
                    self.editor.edit_many, image, spec.prompt, [spec.seed], **spec.overrides()
                )
            except GeneratorError as exc:
                return {"error": str(exc)}
        for key, add in (("images", 1), ("pipeline_calls", 1), ("batches", 1), ("busy_s", item.meta["busy_s"])):
            self.totals[key] += add
        await self.counters.report.remote(self.replica, dict(self.totals))
        return {"png": item.data, "seed": item.meta["seed"], "busy_s": item.meta["busy_s"]}

    def check_health(self) -> None:
        """Serve calls this periodically; a replica whose pipeline is gone is replaced."""
        if self.generator.pipe is None:
            raise RuntimeError("pipeline not loaded")


class _Params(BaseModel):
    """What every route takes, each value bounded; a value out of bounds is a one-line 422 naming its parameter."""

    model_config = ConfigDict(extra="ignore")  # quality, style, user ... from other clients; generator.call_kwargs

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(None, ge=0, lt=2**63)
    num_inference_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(None, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("the prompt is blank")
        return prompt


class GenerateQuery(_Params):
    """The reference protocol's query: `POST /generate?prompt=...&seed=...&width=...`."""

    width: int | None = Field(None, ge=16, le=MAX_SIDE)
    height: int | None = Field(None, ge=16, le=MAX_SIDE)


class ImagesRequest(_Params):
    """OpenAI's image generations body (and edit form) plus the open-server fields gems' `openai` backend sends."""

    model: str | None = Field(None, max_length=256)
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None

    @field_validator("size")
    @classmethod
    def _size_in_bounds(cls, size: str | None) -> str | None:
        if size in (None, "auto"):
            return None
        width, _, height = size.partition("x")
        if not (width.isdigit() and height.isdigit() and len(width) < 6 and len(height) < 6):
            raise ValueError(f"give WIDTHxHEIGHT, each side 16 to {MAX_SIDE}")
        if not (16 <= int(width) <= MAX_SIDE and 16 <= int(height) <= MAX_SIDE):
            raise ValueError(f"each side must be 16 to {MAX_SIDE}")
        return size

    def dimensions(self) -> tuple[int | None, int | None]:
        if not self.size:
            return None, None
        width, height = self.size.split("x")
        return int(width), int(height)


ParamsT = TypeVar("ParamsT", bound=_Params)
_http = FastAPI(title="gems generator service", docs_url=None, redoc_url=None)


def _seeds(seed: int | None, n: int) -> list[int]:
    if seed is None:
        return [random.randrange(2**31) for _ in range(n)]
    return [seed + i for i in range(n)]


def _validated(model: type[ParamsT], data: dict[str, Any] | bytes) -> ParamsT:
    """`data` (a dict, or JSON bytes) as `model`; the first problem as a one-line 422 that never repeats the input."""
    try:
        return model.model_validate_json(data) if isinstance(data, bytes) else model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise HTTPException(422, f"{where}: {' '.join(first['msg'].split())}"[:300]) from None


def _check_headers(request: Request, limit: int) -> None:
    """Refuse Serve's override headers, and a declared body over `limit`, before reading a byte of it."""
    for name in SERVE_OVERRIDE_HEADERS:
        if name in request.headers:
            raise HTTPException(400, f"the {name} header is not accepted here")
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise HTTPException(400, "content-length is not a number")
    if declared is not None and int(declared) > limit:
        raise HTTPException(413, f"the request body is over {limit} bytes")


async def _chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body as it arrives; past `limit` bytes (chunked uploads declare no length) reading stops with a 413."""
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"the request body is over {limit} bytes")
            yield chunk
    except ClientDisconnect:
        raise HTTPException(400, "the client closed the request before its body ended") from None


async def _body(request: Request, limit: int) -> bytes:
    return b"".join([chunk async for chunk in _chunks(request, limit)])


class _Form:
    """A multipart body parsed as it streams in; each part is bounded while it is read (file parts MAX_IMAGE_BYTES,
    text fields MAX_FIELD_BYTES), so nothing is held whole before it is refused."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.files: dict[str, bytes] = {}  # the first file of each name
        self.parts = 0
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value = bytearray(), bytearray()
        self._name, self._is_file, self._data = "", False, bytearray()

    def callbacks(self) -> "MultipartCallbacks":
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_FORM_PARTS:
            raise HTTPException(413, f"the form has more than {MAX_FORM_PARTS} parts")
        self._headers, self._data = {}, bytearray()

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field, self._value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("latin-1")
        self._is_file = b"filename" in options

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if len(self._data) + end - start > (MAX_IMAGE_BYTES if self._is_file else MAX_FIELD_BYTES):
            what = f"a file part is over {MAX_IMAGE_BYTES // 2**20} MiB" if self._is_file else None
            raise HTTPException(413, what or f"a form field is over {MAX_FIELD_BYTES // 2**10} KiB")
        self._data.extend(data[start:end])

    def _part_end(self) -> None:
        if self._is_file:
            self.files.setdefault(self._name, bytes(self._data))
            return
        try:
            self.fields[self._name] = self._data.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPException(422, "a form field is not UTF-8 text") from None


async def _edit_form(request: Request) -> tuple[bytes, ImagesRequest]:
    """The image and fields of a multipart edit request, read within the limits; each problem a one-line 4xx."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise HTTPException(415, "send the edit as multipart/form-data with an image file and a prompt")
    form = _Form()
    try:
        parser = MultipartParser(options[b"boundary"], form.callbacks())
        async for chunk in _chunks(request, MAX_EDIT_BODY_BYTES):
            parser.write(chunk)
        parser.finalize()
    except FormParserError:
        raise HTTPException(400, "the multipart body is malformed") from None
    image = form.files.get("image") or form.files.get("image[]")
    if not image:
        raise HTTPException(422, "no image file in the form (field image or image[])")
    _check_image(image)
    return image, _validated(ImagesRequest, dict(form.fields))


@serve.deployment(name="GemsGeneratorGateway", max_ongoing_requests=4096, ray_actor_options={"num_cpus": 0})
@serve.ingress(_http)
class Gateway:
    """HTTP in front of the replicas: both protocols, the API key, limits, retries when a replica dies, `/health`."""

    def __init__(self, replicas: DeploymentHandle, counters: DeploymentHandle, model: str, api_key: str | None):
        self.replicas = replicas
        self.counters = counters
        self.model = model
        self.api_key = api_key
        self.in_flight = 0
        self.requests = 0
        self.retried = 0

    def _has_key(self, request: Request) -> bool:
        return not self.api_key or key_name({"default": self.api_key}, offered_key(request.headers)) is not None

    def _admit(self, request: Request, limit: int) -> None:
        """What every POST passes before its body is read: the key, then the headers and the declared size."""
        if not self._has_key(request):
            raise HTTPException(401, KEY_HELP, headers={"www-authenticate": "Bearer"})
        _check_headers(request, limit)

    async def _render(self, job: _Job, image: bytes | None = None) -> dict[str, Any]:
        self.in_flight += 1
        try:
            for attempt in range(REPLICA_RETRIES + 1):
                try:
                    if image is None:
                        result = await self.replicas.render.remote(job.model_dump())
                    else:
                        result = await self.replicas.edit.remote({**job.model_dump(), "image": image})
                    break
                except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                    if attempt == REPLICA_RETRIES:
                        raise HTTPException(
                            503, f"generator replica failed mid-request ({type(exc).__name__}); retry"
                        ) from exc
                    self.retried += 1
        finally:
            self.in_flight -= 1
        if "error" in result:
            raise HTTPException(result.get("status", 422), result["error"])
        return result

    async def _render_all(self, jobs: list[_Job], image: bytes | None = None) -> list[dict[str, Any]]:
        self.requests += 1
        return list(await asyncio.gather(*(self._render(job, image) for job in jobs)))

    @_http.post("/generate")
    async def generate(self, request: Request) -> Response:
        """The reference GEMS protocol: `?prompt=` (and optional seed, width, height, num_inference_steps,
        guidance_scale, negative_prompt) answered with PNG bytes; `x-seed` says which seed drew it."""
        self._admit(request, MAX_BODY_BYTES)
        await _body(request, MAX_BODY_BYTES)  # the query says it all; a body is only read to bound it
        query = _validated(GenerateQuery, dict(request.query_params))
        (result,) = await self._render_all(self._jobs(query, query.width, query.height, 1))
        headers = {"x-seed": str(result["seed"]), "x-model": self.model}
        return Response(content=result["png"], media_type="image/png", headers=headers)

    @_http.post("/v1/images/generations")
    async def images(self, request: Request) -> JSONResponse:
        """OpenAI image generations: `n` images as `b64_json` (URLs are not served)."""
        self._admit(request, MAX_BODY_BYTES)
        body = _validated(ImagesRequest, await _body(request, MAX_BODY_BYTES))
        if body.response_format == "url":
            raise HTTPException(400, "this server answers response_format b64_json only")
        return self._images_answer(await self._render_all(self._jobs(body, *body.dimensions(), body.n)))

    @_http.post("/v1/images/edits")
    async def edits(self, request: Request) -> JSONResponse:
        """OpenAI image edits: multipart with `image` (or `image[]`, the first one is edited) and the same fields."""
        self._admit(request, MAX_EDIT_BODY_BYTES)
        image, body = await _edit_form(request)
        if body.response_format == "url":
            raise HTTPException(400, "this server answers response_format b64_json only")
        return self._images_answer(await self._render_all(self._jobs(body, *body.dimensions(), body.n), image))

    def _images_answer(self, results: list[dict[str, Any]]) -> JSONResponse:
        """OpenAI's images answer: each image as `b64_json`, with the seed that drew it."""
        data = [{"b64_json": base64.b64encode(r["png"]).decode(), "seed": r["seed"]} for r in results]
        return JSONResponse({"created": int(time.time()), "model": self.model, "data": data})

    @staticmethod
    def _jobs(params: _Params, width: int | None, height: int | None, n: int) -> list[_Job]:
        shared = params.model_dump(include={"prompt", "num_inference_steps", "guidance_scale", "negative_prompt"})
        return [_Job(**shared, seed=seed, width=width, height=height) for seed in _seeds(params.seed, n)]

    @_http.get("/health")
    async def health(self, request: Request) -> dict[str, Any]:
        """Liveness for anyone; with a key configured, the details (model, replicas, counters) need the key."""
        _check_headers(request, 0)
        if not self._has_key(request):
            return {"ok": True}
        counters = await self.counters.snapshot.remote()
        try:
            status = serve.status().applications[APP_NAME].deployments[REPLICA]
            replicas = {str(state): count for state, count in status.replica_states.items()}
        except (KeyError, AttributeError):
            replicas = {}
        return {
            "ok": True,
            "status": "ok" if replicas.get("RUNNING", 0) > 0 else "degraded",
            "model": self.model,
            "replicas": replicas,
            "queue_depth": self.in_flight,
            "requests": self.requests,
            "retried_after_replica_failure": self.retried,
            **{k: counters[k] for k in ("images", "pipeline_calls", "batches", "largest_batch")},
            "busy_s": round(counters["busy_s"], 3),  # pipeline seconds summed over replicas
            "by_replica": counters["by_replica"],
        }


def build_app(
    settings: GeneratorSettings,
    *,
    replicas: int = 1,
    max_batch_size: int = 8,
    batch_wait_ms: float = 10.0,
    gpus_per_replica: float = 0.0,
    api_key: str | None = None,
    pipeline_factory: Callable[[], Any] | None = None,
    replica: Any = None,
) -> Any:
    """The Serve application (bind graph) for `serve.run`.

    Args:
        settings: a diffusers generator (`generator.backend: diffusers`, a model id or folder, or a preset).
        replicas: pipeline copies; with GPUs, one per GPU.
        max_batch_size: most jobs one replica renders per pipeline call.
        batch_wait_ms: how long a replica waits for a batch to fill.
        gpus_per_replica: 1 on GPU machines, 0 for CPU replicas.
        api_key: required on every route but `/health` when set.
        pipeline_factory: builds a pipeline-like callable in each replica instead of loading `settings.model`
            (benchmarks use latency models).
        replica: a `PipelineReplica` variant (a Serve deployment) in its place (bench/throughput.py compares
            batching designs).

    Raises:
        ConfigError: the settings do not describe a local diffusers model.
    """
    if settings.backend != "diffusers":
        raise ConfigError(
            f"gems serve-generator renders with a local diffusers pipeline, not backend {settings.backend!r}: "
            "set generator.backend: diffusers and generator.model (or a preset)"
        )
    resolved = effective_settings(settings)
    # @serve.deployment turns each class into a Deployment (bind, options); mypy sees Ray as untyped.
    deployments: dict[str, Any] = {"counters": Counters, "replica": replica or PipelineReplica, "gateway": Gateway}
    counters = deployments["counters"].bind()
    actor_options = {"num_gpus": gpus_per_replica} if gpus_per_replica else {"num_cpus": 1}
    pool = (
        deployments["replica"]
        .options(
            num_replicas=replicas,
            ray_actor_options=actor_options,
            max_ongoing_requests=max(512, max_batch_size * CONCURRENT_BATCHES),
        )
        .bind(resolved.model_dump_json(), max_batch_size, batch_wait_ms / 1000.0, counters, pipeline_factory)
    )
    return deployments["gateway"].bind(pool, counters, resolved.model_label, api_key)


def start(
    settings: GeneratorSettings,
    *,
    replicas: int | None = None,
    max_batch_size: int = 8,
    batch_wait_ms: float = 10.0,
    host: str = "127.0.0.1",
    port: int = 8400,
    address: str | None = None,
    api_key: str | None = None,
    request_timeout_s: float = 600.0,
    keep_alive_s: int = 5,
    pipeline_factory: Callable[[], Any] | None = None,
    replica: Any = None,
    ray_init: dict[str, Any] | None = None,
) -> str:
    """Start (or join) Ray, run the application, and return its base URL; `serve.shutdown()` stops it.

    `replicas` defaults to the cluster's GPU count (one per GPU), or 1 without GPUs. Serve's HTTP proxy answers a
    request still running after `request_timeout_s` (body upload included) with 408 and cancels it, and closes a
    connection idle `keep_alive_s` after its last answer; both apply only where this call starts Serve (a running
    Serve keeps its own). The proxy has no timeout for a client still sending its headers.
    """
    import ray

    # Ray reports usage to its authors unless told not to; a model server should not phone home by default.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Serve kills an HTTP proxy not ready within 5 s (serve.start then fails) and restarts one that misses three 10 s
    # health checks; a cold start or a busy machine needs longer. Read by the Ray this call starts.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "30")
    # Ray runs its workers at nice 15; the replicas are this service's whole work, and at that priority any busy
    # process on the machine starves them (loading a pipeline took 230 s instead of 12 s beside two busy loops).
    os.environ.setdefault("RAY_worker_niceness", "0")
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True, **(ray_init or {})}
        if address:
            options["address"] = address
        ray.init(**options)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    replicas = replicas or max(1, gpus)
    serve.start(
        http_options={
            "host": host, "port": port, "request_timeout_s": request_timeout_s, "keep_alive_timeout_s": keep_alive_s,
        }
    )  # fmt: skip
    app = build_app(
        settings, replicas=replicas, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
        gpus_per_replica=1.0 if gpus else 0.0, api_key=api_key, pipeline_factory=pipeline_factory, replica=replica,
    )  # fmt: skip
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def stop() -> None:
    """Stop the application and this process's Ray (a joined cluster keeps running)."""
    import ray

    serve.shutdown()
    ray.shutdown()
