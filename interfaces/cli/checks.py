"""What `gems generate` checks before the first model call: the MLLM endpoint answers, and the generator (and the
editor, when the run edits) answers or has its weights on this machine. Each problem is one line naming the fix.

Nothing here loads a model or sends a prompt: one short request per endpoint, a look at the model folder or the
Hugging Face cache, and, when a hub model is not here yet, one short request to the hub for the whole run.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gems.configs import GemsError, GemsSettings, GeneratorSettings, MLLMSettings
from gems.configs.errors import shown_url
from gems.nodes.generators import editor_settings, effective_settings
from gems.nodes.generators.diffusers_backend import folder_lacks, is_local_path, model_folder

CHECK_S = 10.0  # the most one check waits for an answer (less when the endpoint's own timeout is shorter)
HUB_CHECK_S = 3.0  # the most the hub probe waits: without network, Hugging Face's own retries take minutes
_TRUE = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads HF_HUB_OFFLINE


class CheckFailed(GemsError):
    """A check before the run failed; `lines` holds one line per problem."""

    def __init__(self, lines: list[str]):
        super().__init__(lines[0])
        self.lines = lines


@dataclass
class Findings:
    """What the checks found: lines to show (`notes`) and lines that stop the run (`problems`)."""

    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, other: Findings) -> None:
        self.notes += other.notes
        self.problems += other.problems


def hf_offline() -> bool:
    """Read when the check runs, not when huggingface_hub was imported."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


class HubProbe:
    """Whether the Hugging Face hub (`HF_ENDPOINT`, else https://huggingface.co) answers: one short request, made
    the first time a check asks and shared by every model of the run; any HTTP answer counts."""

    def __init__(self, client: httpx.AsyncClient | None = None, limit: float = HUB_CHECK_S):
        self.endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        self.client = client
        self.limit = limit
        self._answer: asyncio.Future[bool] | None = None

    async def reachable(self) -> bool:
        if self._answer is None:
            self._answer = asyncio.ensure_future(self._probe())
        return await asyncio.shield(self._answer)

    async def _probe(self) -> bool:
        try:
            if self.client is not None:
                await _get(self.client, "HEAD", self.endpoint, self.limit, timeout=self.limit)
            else:
                async with httpx.AsyncClient(follow_redirects=True) as client:
                    await _get(client, "HEAD", self.endpoint, self.limit, timeout=self.limit)
        except _NO_ANSWER:  # OSError: TimeoutError too
            return False
        return True


async def check_run(
    settings: GemsSettings, offline: bool | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> Findings:
    """Check what a run of `settings` calls: lines to show (`notes`) and problems that stop it, one line each.
    `transport`: how requests go out (httpx's own by default)."""
    targets = [("generator", effective_settings(settings.generator))]
    if settings.loop.refine_mode != "regenerate" and settings.editor.backend != "none":
        editor = editor_settings(settings)
        if settings.editor.backend != "generator" or editor.model_dump() != targets[0][1].model_dump():
            targets.append(("editor", editor))
    limit = min(settings.mllm.timeout_s, CHECK_S)
    async with httpx.AsyncClient(timeout=limit, follow_redirects=True, transport=transport) as client:
        hub = HubProbe(client)  # asked at most once, and only for a hub model not in the cache
        found = await asyncio.gather(
            check_mllm(settings.mllm, client, limit, offline, hub),
            *(check_images(section, s, client, limit, offline, hub) for section, s in targets),
        )
    total = Findings()
    for one in found:
        total.add(one)
    return total


BODY_LIMIT = 16 * 2**20  # a /models list is kilobytes; read no more than this of any answer


async def _get(
    client: httpx.AsyncClient, method: str, url: str, limit: float, **kwargs: Any
) -> tuple[int, bytes | None]:
    """Status and body of one request; the body is awaited for at most `limit` more and read up to `BODY_LIMIT`
    (past it, what was read is dropped: b""). None: the body did not arrive whole in time."""
    # Asked uncompressed, so the limit bounds memory (zstd would decode a chunk all at once); a body compressed
    # anyway is not read, so not judged.
    headers = {"Accept-Encoding": "identity", **kwargs.pop("headers", {})}
    async with asyncio.timeout(limit):  # the whole wait for the status line, however the server drips
        response = await client.send(client.build_request(method, url, headers=headers, **kwargs), stream=True)
    try:
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            return response.status_code, b""  # compressed anyway: not decompressed, so not judged
        async with asyncio.timeout(limit):
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > BODY_LIMIT:
                    return response.status_code, b""
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)
    except TimeoutError:
        return response.status_code, None
    finally:
        await response.aclose()


# What a request that got no answer raises (connecting runs in a task group: a bad port comes as an ExceptionGroup).
_NO_ANSWER = (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError, OverflowError, ExceptionGroup)


def _unreachable(exc: Exception, what: str, limit: float, fix: str) -> str:
    """One line for a request that got no answer; `what` names the endpoint and its URL."""
    while isinstance(exc, ExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, httpx.UnsupportedProtocol):
        return f"the {what} is not an http(s) URL; {fix}"
    if isinstance(exc, httpx.InvalidURL | ValueError | OverflowError):  # its text may quote the URL's password
        return f"the {what} is not a valid URL (check its host, port and any user:password in it); {fix}"
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"the {what} did not answer within {limit:g}s; check the server"
    if isinstance(exc, httpx.TooManyRedirects):
        return f"the {what} redirects in a loop; check the URL"
    return f"cannot reach the {what}; {fix}"


def _not_json(body: bytes, url: str, key: str = "mllm.base_url") -> str:
    """What a /models answer that is not an OpenAI model list is, and the fix."""
    page = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<"  # a byte-order mark may come first
    what = "a web page" if page else "something other than an OpenAI model list"
    if url.rstrip("/").endswith("/v1"):
        return f"{what}; check {key}: no OpenAI-compatible API answers there"
    return f"{what}; {key} should end in /v1, e.g. http://127.0.0.1:8000/v1"


def _listing(
    body: bytes | None, who: str, shown: str, url: str, key: str, limit: float
) -> tuple[list[str], str | None]:
    """A 2xx answer to GET /models: the model ids it lists, or the problem line when it never finished (`body` None)
    or is no model list; `who` names the endpoint, `key` the setting to fix."""
    if body is None:
        return [], f"the {who} sent no complete answer to GET /models within {limit:g}s; check the server"
    ids = _model_ids(body)
    if ids is None:
        return [], f"the {who} answered GET {shown}/models with {_not_json(body, url, key)}"
    return ids, None


def _model_ids(body: bytes) -> list[str] | None:
    """The model ids a /models answer lists; None when the body is not an OpenAI-style JSON object (a web page)."""
    try:
        answer = json.loads(body or b"{}")
        data = answer.get("data") or []
        return [str(item["id"]) for item in data if isinstance(item, dict) and item.get("id")]
    except (ValueError, AttributeError, TypeError):
        return None


GATEWAY = (502, 503, 504)  # a proxy whose server is down, or a server still starting: the run would fail too


def _gateway(what: str, status: int) -> str:
    why = "a proxy in front of a server that is down, or a server still starting"
    return f"the {what} answered HTTP {status} ({why}); check the server"


async def check_mllm(
    s: MLLMSettings,
    client: httpx.AsyncClient,
    limit: float = CHECK_S,
    offline: bool | None = None,
    hub: HubProbe | None = None,
) -> Findings:
    """GET {base_url}/models with the key: unreachable, a refused key or no OpenAI API there is a problem; a model in
    this process (`mllm.backend: transformers`) needs its weights here instead."""
    if s.backend == "transformers":
        offline = hf_offline() if offline is None else offline
        return await check_weights("mllm", s.model, offline, in_process_vlm=True, hub=hub or HubProbe(client))
    url = s.base_url.rstrip("/")
    base = shown_url(url)
    key = s.resolved_api_key()
    headers = {"Authorization": f"Bearer {key}"}
    what = f"MLLM endpoint {base} (model {s.model})"
    fix = "start the server or set GEMS_MLLM_BASE_URL / mllm.base_url"
    if ":11434" in base:  # Ollama's port (the cpu preset)
        fix = f"start Ollama (ollama serve, then ollama pull {s.model}) or set GEMS_MLLM_BASE_URL / mllm.base_url"
    key_fix = "set GEMS_MLLM_API_KEY (or OPENAI_API_KEY) or mllm.api_key"
    found = Findings()
    no_api = "mllm.base_url should end in /v1, e.g. http://127.0.0.1:8000/v1"
    try:
        status, body = await _get(client, "GET", f"{url}/models", limit, headers=headers)
        if status == 404 or (status >= 500 and status not in GATEWAY):
            # Some servers have no /models (or a broken one): a chat route that exists answers an empty body with 4xx.
            listed = status
            status, _ = await _get(client, "POST", f"{url}/chat/completions", limit, headers=headers, json={})
            if status == 404:
                answered = "answered 404" if listed == 404 else f"answered HTTP {listed} and 404"
                found.problems.append(
                    f"the {what} has no OpenAI-compatible API (GET {base}/models and POST {base}/chat/completions "
                    f"{answered}); {no_api}"
                )
                return found
            if status >= 500 and listed != 404:  # (a server without /models may answer an empty body with 500)
                found.problems.append(
                    f"the {what} answered HTTP {listed} to GET /models and HTTP {status} to POST /chat/completions; "
                    "check the server"
                )
                return found
            status, body = (status, b"") if status in (401, 403) else (200, b"")
    except _NO_ANSWER as exc:  # TimeoutError: an OSError
        found.problems.append(_unreachable(exc, what, limit, fix))
        return found
    ids, problem = _listing(body, what, base, url, "mllm.base_url", limit) if status < 400 else ([], None)
    if status in (401, 403):
        said = "needs an API key" if key == "EMPTY" else f"rejected the API key (HTTP {status})"
        found.problems.append(f"the {what} {said}; {key_fix}")
    elif status in GATEWAY:
        found.problems.append(_gateway(what, status))
    elif status >= 400:
        found.notes.append(f"warning    the {what} answered HTTP {status} to GET /models; the run goes on")
    elif problem:
        found.problems.append(problem)
    else:
        if ids and s.model not in ids and f"{s.model}:latest" not in ids:
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            found.notes.append(
                f"warning    the MLLM endpoint {base} lists no model {s.model} (it lists {shown}); "
                "if the run fails, set mllm.model (GEMS_MLLM_MODEL)"
            )
        else:
            found.notes.append(f"check      MLLM endpoint {base} answers (model {s.model})")
    return found


async def check_images(
    section: str,
    s: GeneratorSettings,
    client: httpx.AsyncClient,
    limit: float = CHECK_S,
    offline: bool | None = None,
    hub: HubProbe | None = None,
) -> Findings:
    """A remote backend's URL answers (any HTTP status) and takes the key; a diffusers model is on this machine."""
    if s.backend == "diffusers":
        offline = hf_offline() if offline is None else offline
        return await check_weights(section, s.model or "", offline, hub=hub or HubProbe(client))
    found = Findings()
    if not s.url:
        found.problems.append(f"{section}.url is not set: the {s.backend} backend needs the server's URL")
    if s.backend == "openai" and not s.model:
        found.problems.append(f"{section}.model is not set: the openai backend needs the model's name")
    if not s.url or found.problems:
        return found
    url = s.url.rstrip("/")
    shown = shown_url(url)
    what = f"{section} server" if s.backend == "http" else f"{section} endpoint"
    env = "GEMS_GENERATOR_URL / " if section == "generator" else ""
    fix = f"start it or set {env}{section}.url"
    headers = {"Authorization": f"Bearer {s.resolved_api_key()}"} if s.backend == "openai" else {}
    try:
        # HEAD for the reference protocol: a GET or POST there would render an image.
        method, target = ("HEAD", url) if s.backend == "http" else ("GET", f"{url}/models")
        status, body = await _get(client, method, target, limit, headers=headers)
    except _NO_ANSWER as exc:
        found.problems.append(_unreachable(exc, f"{what} {shown}", limit, fix))
        return found
    _, problem = (
        _listing(body, f"{what} {shown}", shown, url, f"{section}.url", limit)
        if s.backend == "openai" and status < 400
        else ([], None)
    )
    if s.backend == "openai" and status in (401, 403):
        found.problems.append(
            f"the {what} {shown} rejected the API key (HTTP {status}); set {section}.api_key or OPENAI_API_KEY"
        )
    elif status in GATEWAY:
        found.problems.append(_gateway(f"{what} {shown}", status))
    elif problem:
        found.problems.append(problem)
    else:
        found.notes.append(f"check      {what} {shown} answers")
    return found


async def check_weights(
    section: str,
    model: str,
    offline: bool,
    cache_dir: Path | None = None,
    in_process_vlm: bool = False,
    hub: HubProbe | None = None,
) -> Findings:
    """A diffusers model (or, `in_process_vlm`, a transformers model) loads from a folder holding model_index.json
    (config.json) and its weights, or a hub id whole in the Hugging Face cache; one that is not is downloaded on
    first use when online and the hub (`hub`, asked once per run) answers. `cache_dir`: the cache, default
    huggingface_hub's (HF_HUB_CACHE)."""
    marker, kind = ("config.json", "transformers") if in_process_vlm else ("model_index.json", "diffusers")
    # An in-process VLM's messages start as its loader's do, so both read alike.
    cannot = f"cannot load the in-process model {model!r}: it" if in_process_vlm else f"{section} model {model}"
    found = Findings()
    if is_local_path(model):  # a folder, never a hub id: say what it lacks
        lacks = folder_lacks(model_folder(model), diffusers=not in_process_vlm)
        if lacks is None:
            found.notes.append(f"check      {section} {model}: a local {kind} folder")
        else:
            found.problems.append(
                f"{section}.model {model}: {lacks}; point it at a complete {kind} model folder (one saved by "
                "save_pretrained)"
            )
        return found
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(model, marker, cache_dir=cache_dir)
    except HFValidationError:
        example = "Qwen/Qwen3-VL-8B-Instruct" if in_process_vlm else "Tongyi-MAI/Z-Image-Turbo"
        found.problems.append(
            f"{section}.model {model}: no such folder, and not a Hugging Face model id; give a {kind} model "
            f"folder or a hub id such as {example}"
        )
        return found
    where, rest = "not in the Hugging Face cache", "it"
    if isinstance(cached, str):  # the snapshot folder, as a local folder: an interrupted download lacks weights
        lacks = folder_lacks(Path(cached).parent, diffusers=not in_process_vlm)
        if lacks is None:
            found.notes.append(f"check      {section} {model}: in the Hugging Face cache")
            return found
        where, rest = f"only partly in the Hugging Face cache ({lacks})", "the rest"
    if offline:
        found.problems.append(
            f"{cannot} is {where} and HF_HUB_OFFLINE is set: download it first "
            f"(hf download {model}) or set {section}.model to a local folder"
        )
        return found
    hub = hub or HubProbe()
    if await hub.reachable():
        found.notes.append(
            f"check      {section} {model}: {where}; {rest} will be downloaded on first use "
            f"(or fetch it now: hf download {model})"
        )
    else:
        found.problems.append(
            f"{cannot} is {where} and {hub.endpoint} cannot be reached; download it where there is network "
            f"(hf download {model}) and copy the cache, or set {section}.model to a local folder"
        )
    return found
