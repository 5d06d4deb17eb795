"""`gems serve-generator`: the configured diffusers model as a Ray Serve application.

Three deployments: `GemsGenerator` replicas each hold one pipeline copy (one GPU each where the cluster has GPUs)
and batch the image jobs that reach them with `serve.batch`: jobs that agree on size, steps, guidance and negative
prompt share one pipeline call, each image with its own seeded generator, so a batched image equals its seed
rendered alone. `GemsGeneratorGateway` is the HTTP ingress: the reference GEMS protocol (`POST /generate?prompt=` ->
PNG) and OpenAI's `POST /v1/images/generations` (`b64_json`), so gems' `http` and `openai` backends and the
reference GEMS code use it unchanged, plus `POST /v1/images/edits` (multipart) when the pipeline takes an input
image (FLUX.2 [klein], Qwen-Image-Edit, FLUX.1 Kontext), for `editor.backend: openai`; `/health` reports replicas,
queue depth and counters. `GemsGeneratorCounters` adds up what every replica did. Ray places, restarts and scales
the replicas; nothing here queues or schedules.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime through Serve's ingress.
import asyncio
import base64
import io
import os
import random
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle

from gems.configs import ConfigError, GeneratorSettings
from gems.configs.settings import KEY_HELP, key_name, offered_key
from gems.nodes.generators import GeneratorError, effective_settings
from gems.nodes.generators.diffusers_backend import DiffusersGenerator  # torch and diffusers load on first use
from gems.nodes.generators.edit import DiffusersEditor

APP_NAME = "gems-generator"
REPLICA = "GemsGenerator"
MAX_PROMPT_CHARS = 4000
MAX_IMAGES = 16
REPLICA_RETRIES = 2  # a job whose replica died is sent again (Ray routes it to a live one)
CONCURRENT_BATCHES = 64  # Serve batches in a replica at once; they merge at the pipeline (see render_batch)
MAX_EDIT_BYTES = 32 * 2**20  # an uploaded image to edit
MAX_EDIT_PIXELS = 4096 * 4096


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
    # next requests pile up as many small batches (measured: 48 requests 50 ms apart -> 26 calls). Letting batches
    # run at once and having whichever takes the pipeline render everything waiting by then fills the calls
    # (48 -> 7 calls).
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
                    await self._render(taken)
        return [future.result() for _, future in mine]

    async def _render(self, taken: list[tuple[_Job, asyncio.Future[dict[str, Any]]]]) -> None:
        """Render the taken jobs, one pipeline call per group of compatible settings, and resolve their futures."""
        groups: dict[tuple[Any, ...], list[tuple[_Job, asyncio.Future[dict[str, Any]]]]] = {}
        for job, future in taken:
            groups.setdefault(job.group(), []).append((job, future))
        for group in groups.values():
            overrides = group[0][0].overrides()
            prompts, seeds = [job.prompt for job, _ in group], [job.seed for job, _ in group]
            try:
                rendered = await asyncio.to_thread(self.generator.render_prompts, prompts, seeds, **overrides)
                for (_, future), item in zip(group, rendered, strict=True):
                    future.set_result({"png": item.data, "seed": item.meta["seed"], "busy_s": item.meta["busy_s"]})
                    self.totals["busy_s"] += item.meta["busy_s"]
            except GeneratorError as exc:
                for _, future in group:
                    future.set_result({"error": str(exc)})
            self.totals["pipeline_calls"] += 1
            self.totals["largest_batch"] = max(self.totals["largest_batch"], len(group))
        self.totals["images"] += len(taken)
        self.totals["batches"] += 1
        await self.counters.report.remote(self.replica, dict(self.totals))

    async def edit(self, job: dict[str, Any]) -> dict[str, Any]:
        """Edit one image (`job["image"]`, encoded) by `job["prompt"]`; edits are not batched."""
        if self.editor is None and self.cannot_edit is None:
            try:
                self.editor = DiffusersEditor(self.generator.settings, pipe=self.generator.pipe)
            except GeneratorError as exc:
                self.cannot_edit = str(exc)
        if self.editor is None:
            return {"error": self.cannot_edit, "status": 400}
        image = job.pop("image")
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


class ImagesRequest(BaseModel):
    """OpenAI's image generations body plus the open-server fields gems' `openai` backend sends."""

    model_config = ConfigDict(extra="ignore")  # quality, style, user ... from other clients

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    size: str | None = Field(None, pattern=r"^\d{2,4}x\d{2,4}$")
    seed: int | None = Field(None, ge=0, lt=2**63)
    num_inference_steps: int | None = Field(None, ge=1, le=500)
    guidance_scale: float | None = Field(None, ge=0, le=100)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    response_format: Literal["b64_json", "url"] | None = None


_http = FastAPI(title="gems generator service", docs_url=None, redoc_url=None)


def _seeds(seed: int | None, n: int) -> list[int]:
    if seed is None:
        return [random.randrange(2**31) for _ in range(n)]
    return [seed + i for i in range(n)]


def _size(size: str | None) -> tuple[int | None, int | None]:
    if not size:
        return None, None
    width, height = (int(x) for x in size.split("x"))
    if not (16 <= width <= 4096 and 16 <= height <= 4096):  # the bounds of generator.width/height
        raise HTTPException(422, f"size {size} is outside 16x16 .. 4096x4096")
    return width, height


async def _edit_form(request: Request) -> tuple[bytes, ImagesRequest]:
    """The image and fields of a multipart edit request, each problem a one-line 4xx."""
    from PIL import Image, UnidentifiedImageError
    from pydantic import ValidationError
    from starlette.datastructures import UploadFile

    if not (request.headers.get("content-type") or "").startswith("multipart/form-data"):
        raise HTTPException(415, "send the edit as multipart/form-data with an image file and a prompt")
    form = await request.form(max_files=16, max_fields=64, max_part_size=MAX_EDIT_BYTES)
    upload = form.get("image") or form.get("image[]")
    if not isinstance(upload, UploadFile):
        raise HTTPException(422, "no image file in the form (field image or image[])")
    data = await upload.read(MAX_EDIT_BYTES + 1)
    if len(data) > MAX_EDIT_BYTES:
        raise HTTPException(413, f"the image is over {MAX_EDIT_BYTES // 2**20} MiB")
    try:
        with Image.open(io.BytesIO(data)) as picture:  # the header only
            if picture.width * picture.height > MAX_EDIT_PIXELS:
                raise HTTPException(413, f"the image is {picture.width}x{picture.height}, over 4096x4096 pixels")
    except (UnidentifiedImageError, OSError):
        raise HTTPException(422, "the uploaded file is not an image PIL can read") from None
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    try:
        body = ImagesRequest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise HTTPException(422, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    return data, body


@serve.deployment(name="GemsGeneratorGateway", max_ongoing_requests=4096, ray_actor_options={"num_cpus": 0})
@serve.ingress(_http)
class Gateway:
    """HTTP in front of the replicas: both protocols, the API key, retries when a replica dies, `/health`."""

    def __init__(self, replicas: DeploymentHandle, counters: DeploymentHandle, model: str, api_key: str | None):
        self.replicas = replicas
        self.counters = counters
        self.model = model
        self.api_key = api_key
        self.in_flight = 0
        self.requests = 0
        self.retried = 0

    def _check_key(self, request: Request) -> None:
        if not self.api_key:
            return
        if key_name({"default": self.api_key}, offered_key(request.headers)) is None:
            raise HTTPException(401, KEY_HELP, headers={"www-authenticate": "Bearer"})

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
    async def generate(
        self,
        request: Request,
        prompt: str,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
    ) -> Response:
        """The reference GEMS protocol: the image as PNG bytes; `x-seed` says which seed drew it."""
        self._check_key(request)
        body = ImagesRequest(
            prompt=prompt, seed=seed, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            negative_prompt=negative_prompt, size=f"{width}x{height}" if width and height else None,
        )  # fmt: skip
        (result,) = await self._render_all(self._jobs(body))
        headers = {"x-seed": str(result["seed"]), "x-model": self.model}
        return Response(content=result["png"], media_type="image/png", headers=headers)

    @_http.post("/v1/images/generations")
    async def images(self, request: Request, body: ImagesRequest) -> JSONResponse:
        """OpenAI image generations: `n` images as `b64_json` (URLs are not served)."""
        self._check_key(request)
        if body.response_format == "url":
            raise HTTPException(400, "this server answers response_format b64_json only")
        return self._images_answer(await self._render_all(self._jobs(body)))

    @_http.post("/v1/images/edits")
    async def edits(self, request: Request) -> JSONResponse:
        """OpenAI image edits: multipart with `image` (or `image[]`, the first one is edited) and the same fields."""
        self._check_key(request)
        image, body = await _edit_form(request)
        if body.response_format == "url":
            raise HTTPException(400, "this server answers response_format b64_json only")
        return self._images_answer(await self._render_all(self._jobs(body), image))

    def _images_answer(self, results: list[dict[str, Any]]) -> JSONResponse:
        """OpenAI's images answer: each image as `b64_json`, with the seed that drew it."""
        data = [{"b64_json": base64.b64encode(r["png"]).decode(), "seed": r["seed"]} for r in results]
        return JSONResponse({"created": int(time.time()), "model": self.model, "data": data})

    def _jobs(self, body: ImagesRequest) -> list[_Job]:
        width, height = _size(body.size)
        shared = body.model_dump(include={"prompt", "num_inference_steps", "guidance_scale", "negative_prompt"})
        return [_Job(**shared, seed=seed, width=width, height=height) for seed in _seeds(body.seed, body.n)]

    @_http.get("/health")
    async def health(self) -> dict[str, Any]:
        """Replicas by state, jobs waiting or rendering, and counters since start (no key needed)."""
        counters = await self.counters.snapshot.remote()
        try:
            status = serve.status().applications[APP_NAME].deployments[REPLICA]
            replicas = {str(state): count for state, count in status.replica_states.items()}
        except (KeyError, AttributeError):
            replicas = {}
        return {
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
    deployments: dict[str, Any] = {"counters": Counters, "replica": PipelineReplica, "gateway": Gateway}
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
    pipeline_factory: Callable[[], Any] | None = None,
    ray_init: dict[str, Any] | None = None,
) -> str:
    """Start (or join) Ray, run the application, and return its base URL; `serve.shutdown()` stops it.

    `replicas` defaults to the cluster's GPU count (one per GPU), or 1 without GPUs.
    """
    import ray

    # Ray reports usage to its authors unless told not to; a model server should not phone home by default.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True, **(ray_init or {})}
        if address:
            options["address"] = address
        ray.init(**options)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    replicas = replicas or max(1, gpus)
    serve.start(http_options={"host": host, "port": port})
    app = build_app(
        settings, replicas=replicas, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
        gpus_per_replica=1.0 if gpus else 0.0, api_key=api_key, pipeline_factory=pipeline_factory,
    )  # fmt: skip
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def stop() -> None:
    """Stop the application and this process's Ray (a joined cluster keeps running)."""
    import ray

    serve.shutdown()
    ray.shutdown()
