"""What `gems generate` checks before the first model call: endpoints answer, keys are taken, weights are here.

The endpoint checks talk to an httpx mock transport (no socket), the weight checks to a Hugging Face cache folder
built in the test; the last tests run the CLI against local servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from gems.configs import GemsSettings, GeneratorSettings, MLLMSettings
from gems.interfaces.cli.checks import Findings, check_images, check_mllm, check_run, check_weights
from tests.support.net import free_port, write_stub_config
from tests.test_cli import error_lines, gems

BASE = "http://mllm.test/v1"


def mllm_check(answer: Callable[[httpx.Request], httpx.Response], **settings) -> tuple[Findings, list[str]]:
    """check_mllm against `answer`; also returns the requests it made ("METHOD path")."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return answer(request)

    async def go() -> Findings:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await check_mllm(MLLMSettings(**{"base_url": BASE, "model": "qwen-vl", **settings}), client, 5)

    return asyncio.run(go()), seen


def models(*ids: str) -> httpx.Response:
    return httpx.Response(200, json={"object": "list", "data": [{"id": i, "object": "model"} for i in ids]})


def test_an_mllm_endpoint_that_answers_passes_with_one_line():
    found, seen = mllm_check(lambda r: models("qwen-vl", "other"), api_key="k")
    assert found.problems == [] and found.notes == [f"check      MLLM endpoint {BASE} answers (model qwen-vl)"]
    assert seen == ["GET /v1/models"]  # one request, no prompt sent
    ollama, _ = mllm_check(lambda r: models("qwen-vl:latest"))  # Ollama lists the tag it serves
    assert ollama.problems == [] and ollama.notes[0].startswith("check ")


def test_a_model_the_server_does_not_list_is_a_warning_not_an_error():
    found, _ = mllm_check(lambda r: models("llava:7b", "moondream"))
    assert found.problems == []
    assert found.notes == [
        f"warning    the MLLM endpoint {BASE} lists no model qwen-vl (it lists llava:7b, moondream); "
        "if the run fails, set mllm.model (GEMS_MLLM_MODEL)"
    ]


@pytest.mark.parametrize(
    ("status", "key", "says"),
    [
        (401, "wrong", f"endpoint {BASE} (model qwen-vl) rejected the API key (HTTP 401); set GEMS_MLLM_API_KEY"),
        (403, "wrong", "rejected the API key (HTTP 403)"),
        (401, None, f"the MLLM endpoint {BASE} (model qwen-vl) needs an API key; set GEMS_MLLM_API_KEY"),
    ],
)
def test_a_refused_key_is_one_line_naming_the_url_and_the_fix(status, key, says):
    found, _ = mllm_check(lambda r: httpx.Response(status, json={"error": "no"}), api_key=key)
    assert len(found.problems) == 1 and says in found.problems[0]


def test_a_url_without_the_api_is_one_line_and_a_server_without_models_passes():
    found, seen = mllm_check(lambda r: httpx.Response(404, text="Not Found"))
    assert seen == ["GET /v1/models", "POST /v1/chat/completions"]
    assert found.problems == [
        f"the MLLM endpoint {BASE} (model qwen-vl) has no OpenAI-compatible API (GET {BASE}/models and POST "
        f"{BASE}/chat/completions answered 404); mllm.base_url should end in /v1, e.g. http://127.0.0.1:8000/v1"
    ]
    # No /models, but a chat route that answers a bad request: the server is there.
    found, _ = mllm_check(lambda r: httpx.Response(404 if r.url.path.endswith("models") else 400))
    assert found.problems == [] and found.notes[0].startswith("check      MLLM endpoint")


def test_a_web_page_a_broken_server_or_a_down_proxy_stops_the_run():
    page = httpx.Response(200, text="<!doctype html><title>Open WebUI</title>", headers={"content-type": "text/html"})
    found, _ = mllm_check(lambda r: page)  # base_url without /v1: a web app's page, status 200
    assert found.problems == [
        f"the MLLM endpoint {BASE} (model qwen-vl) answered GET {BASE}/models with a web page; check mllm.base_url: "
        "no OpenAI-compatible API answers there"
    ]
    bare = "http://mllm.test"
    found, _ = mllm_check(lambda r: page, base_url=bare)
    assert found.problems == [
        f"the MLLM endpoint {bare} (model qwen-vl) answered GET {bare}/models with a web page; mllm.base_url should "
        "end in /v1, e.g. http://127.0.0.1:8000/v1"
    ]
    found, _ = mllm_check(lambda r: httpx.Response(200, json=["qwen-vl"]))
    assert found.problems[0].endswith("with something other than an OpenAI model list; check mllm.base_url: no "
                                      "OpenAI-compatible API answers there")  # fmt: skip
    found, seen = mllm_check(lambda r: httpx.Response(500, text="Internal Server Error"))
    assert seen == ["GET /v1/models", "POST /v1/chat/completions"]  # a broken /models alone does not stop a run
    assert found.problems == [
        f"the MLLM endpoint {BASE} (model qwen-vl) answered HTTP 500 to GET /models and HTTP 500 to POST "
        "/chat/completions; check the server"
    ]
    found, _ = mllm_check(lambda r: httpx.Response(500 if r.url.path.endswith("models") else 422))
    assert found.problems == [] and found.notes[0].startswith("check      MLLM endpoint")
    # No /models at all, and a chat route that fails on an empty body: nothing says the server is broken.
    found, _ = mllm_check(lambda r: httpx.Response(404 if r.url.path.endswith("models") else 500))
    assert found.problems == [] and found.notes[0].startswith("check      MLLM endpoint")
    found, seen = mllm_check(lambda r: httpx.Response(502, text="Bad Gateway"))
    assert seen == ["GET /v1/models"] and found.problems == [
        f"the MLLM endpoint {BASE} (model qwen-vl) answered HTTP 502 (a proxy in front of a server that is down, or "
        "a server still starting); check the server"
    ]
    found, _ = mllm_check(lambda r: httpx.Response(405))  # an odd answer, but a server: the run goes on
    assert found.problems == [] and found.notes[0].startswith("warning ")


def test_a_models_answer_that_never_ends_or_never_stops_is_not_taken_as_a_pass():
    class Drip(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield b'{"data": ['
            await asyncio.sleep(30)  # the check's own limit (5 s here) ends it
            yield b"]}"

    found, _ = mllm_check(lambda r: httpx.Response(200, stream=Drip()))
    assert found.problems == [
        f"the MLLM endpoint {BASE} (model qwen-vl) sent no complete answer to GET /models within 5s; check the server"
    ]

    class Endless(httpx.AsyncByteStream):
        sent = 0

        async def __aiter__(self):
            while True:
                Endless.sent += 2**20
                yield b" " * 2**20

    found, _ = mllm_check(lambda r: httpx.Response(200, stream=Endless()))
    assert found.problems == [] and Endless.sent <= 17 * 2**20  # read up to the limit, then not judged


def test_shown_url_cuts_where_a_url_parser_finds_the_host():
    from gems.configs.errors import shown_url, without_passwords

    hidden = {
        "http://alice:p@ss@h:1/v1": "http://h:1/v1",  # the host follows the authority's last @
        "http://al@ice:pw@h/v1": "http://h/v1",
        "http://alice:sec ret@h/v1": "http://h/v1",
        "http://alice:pa#ss@h/v1": "http://h/v1",  # no URL parser reads it; still nothing of the password
        "http://alice:pa/ss@h/v1": "http://h/v1",
        "bob:hunter2@h:1/gen": "h:1/gen",
    }
    kept = ["http://h/v1/models?user=a@b", "https://api.example.com/v1/users/bob@example.com/m", "http://[::1]:80/v1"]
    for url, shown in {**hidden, **{u: u for u in kept}}.items():
        assert shown_url(url) == shown, url
    dump = {"memory": {"chroma": {"url": "http://u:pw@h:8000", "headers": {"Authorization": "Bearer tok"}}}}
    assert without_passwords(dump) == {
        "memory": {"chroma": {"url": "http://h:8000", "headers": {"Authorization": "***"}}}
    }


def test_a_password_in_an_endpoint_url_is_never_shown():
    found, _ = mllm_check(refuse_all, base_url="http://alice:s3cretpw@mllm.test/v1")
    assert found.problems and "s3cretpw" not in found.problems[0] and "alice" not in found.problems[0]
    assert "http://mllm.test/v1" in found.problems[0]
    # A password httpx cannot parse ('#' in it), or a port out of range: one line, and no part of the password.
    found, seen = mllm_check(lambda r: models("qwen-vl"), base_url="http://alice:pa#ss@mllm.test/v1")
    assert seen == [] and found.problems == [
        "the MLLM endpoint http://mllm.test/v1 (model qwen-vl) is not a valid URL (check its host, port and any "
        "user:password in it); start the server or set GEMS_MLLM_BASE_URL / mllm.base_url"
    ]

    async def real() -> Findings:  # the port is refused by the socket layer, not by httpx
        async with httpx.AsyncClient() as client:
            return await check_mllm(MLLMSettings(base_url="http://127.0.0.1:99999/v1", model="m"), client, 5)

    assert asyncio.run(real()).problems[0].startswith("the MLLM endpoint http://127.0.0.1:99999/v1 (model m) is not ")


def test_a_compressed_answer_is_not_decompressed_by_the_check():
    import gzip

    bomb = gzip.compress(b" " * 2**26)  # 64 MiB of spaces, 64 KiB sent
    answer = httpx.Response(200, content=bomb, headers={"content-encoding": "gzip"})
    found, _ = mllm_check(lambda r: r.headers["accept-encoding"] == "identity" and answer)
    assert found.problems == [] and found.notes[0].startswith("check      MLLM endpoint")  # sent anyway: not judged


def refuse_all(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def test_unreachable_and_silent_endpoints_are_one_line_each():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def silent(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    found, _ = mllm_check(refuse)
    assert found.problems == [
        f"cannot reach the MLLM endpoint {BASE} (model qwen-vl); start the server or set GEMS_MLLM_BASE_URL / "
        "mllm.base_url"
    ]
    found, _ = mllm_check(silent)
    assert found.problems == [f"the MLLM endpoint {BASE} (model qwen-vl) did not answer within 5s; check the server"]


def test_remote_generators_need_an_answer_and_their_key():
    def check(settings: GeneratorSettings, answer: Callable[[httpx.Request], httpx.Response]) -> Findings:
        async def go() -> Findings:
            async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
                return await check_images("generator", settings, client, 5)

        return asyncio.run(go())

    http = GeneratorSettings(backend="http", url="http://gen.test/generate", preset=None)
    heads: list[str] = []
    found = check(http, lambda r: heads.append(r.method) or httpx.Response(405))  # any answer will do
    assert found.problems == [] and heads == ["HEAD"]  # never GET or POST: that would render an image

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    assert check(http, refuse).problems == [
        "cannot reach the generator server http://gen.test/generate; start it or set GEMS_GENERATOR_URL / generator.url"
    ]
    images = GeneratorSettings(backend="openai", url="http://img.test/v1", model="gpt-image-1", preset=None)
    assert check(images, lambda r: httpx.Response(401)).problems == [
        "the generator endpoint http://img.test/v1 rejected the API key (HTTP 401); set generator.api_key or "
        "OPENAI_API_KEY"
    ]
    assert check(images, lambda r: httpx.Response(404)).problems == []  # no /models there, but it answers
    assert check(images, lambda r: httpx.Response(200, text="<html>a web app</html>")).problems == [
        "the generator endpoint http://img.test/v1 answered GET http://img.test/v1/models with a web page; check "
        "generator.url: no OpenAI-compatible API answers there"
    ]
    assert check(http, lambda r: httpx.Response(503)).problems == [
        "the generator server http://gen.test/generate answered HTTP 503 (a proxy in front of a server that is down, "
        "or a server still starting); check the server"
    ]
    unnamed = GeneratorSettings(backend="openai", url="http://img.test/v1", preset=None)
    assert check(unnamed, lambda r: models("x")).problems == [
        "generator.model is not set: the openai backend needs the model's name"
    ]


def test_an_edit_run_checks_its_editor_before_the_run():
    settings = GemsSettings.model_validate({
        "mllm": {"base_url": BASE, "model": "qwen-vl"},
        "generator": {"backend": "http", "url": "http://gen.test/generate", "preset": None},
        "editor": {"backend": "openai", "url": "http://img.test/v1"},
        "loop": {"refine_mode": "edit"},
        "memory": {"lessons": False},
    })  # fmt: skip
    found = asyncio.run(check_run(settings, transport=httpx.MockTransport(lambda r: models("qwen-vl"))))
    assert found.problems == ["editor.model is not set: the openai backend needs the model's name"]


NO_TENSORS = (2).to_bytes(8, "little") + b"{}"  # a whole safetensors file that holds no tensors


def hub_cache(root: Path, repo: str, marker: str = "model_index.json", weights: bool = True) -> Path:
    """A Hugging Face cache holding `repo`'s `marker` file (and a weight file), laid out as `hf download` leaves it."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / marker).write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    if weights:
        (snapshot / "model.safetensors").write_bytes(NO_TENSORS)
    return root


def weights(section: str, model: str, offline: bool, cache: Path | None = None, vlm: bool = False) -> Findings:
    return asyncio.run(check_weights(section, model, offline, cache, in_process_vlm=vlm))


def test_diffusers_weights_are_looked_for_before_the_run(tmp_path, tiny_sd_dir):
    found = weights("generator", str(tiny_sd_dir), offline=True)
    assert found.problems == [] and found.notes == [f"check      generator {tiny_sd_dir}: a local diffusers folder"]
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    assert weights("generator", str(empty), offline=True).problems == [
        f"generator.model {empty}: no model_index.json in the folder; point it at a complete diffusers model folder "
        "(one saved by save_pretrained)"
    ]
    missing = str(tmp_path / "no" / "such" / "folder")
    assert "no such folder" in weights("editor", missing, offline=True).problems[0]

    cache = hub_cache(tmp_path / "hub", "acme/tiny-model")
    cached = weights("generator", "acme/tiny-model", offline=True, cache=cache)
    assert cached.problems == [] and cached.notes == ["check      generator acme/tiny-model: in the Hugging Face cache"]
    offline = weights("generator", "acme/other-model", offline=True, cache=cache)
    assert offline.problems == [
        "generator model acme/other-model is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download it "
        "first (hf download acme/other-model) or set generator.model to a local folder"
    ]


def test_an_in_process_vlm_needs_its_weights_here_not_an_endpoint(tmp_path):
    cache = hub_cache(tmp_path / "hub", "acme/tiny-vlm", marker="config.json")
    folder = tmp_path / "vlm"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(NO_TENSORS)
    assert weights("mllm", str(folder), True, vlm=True).notes == [
        f"check      mllm {folder}: a local transformers folder"
    ]
    assert weights("mllm", "acme/tiny-vlm", True, cache, vlm=True).problems == []
    assert weights("mllm", "acme/other-vlm", True, cache, vlm=True).problems == [
        "cannot load the in-process model 'acme/other-vlm': it is not in the Hugging Face cache and HF_HUB_OFFLINE "
        "is set: download it first (hf download acme/other-vlm) or set mllm.model to a local folder"
    ]
    # No endpoint is asked: the model runs in this process.
    found, seen = mllm_check(lambda r: httpx.Response(500), backend="transformers")
    assert seen == [] and found.problems and "in-process model 'qwen-vl'" in found.problems[0]


def test_a_local_folder_is_told_what_it_lacks_never_to_hf_download_a_path(tmp_path, tiny_sd_dir, monkeypatch):
    vlm = tmp_path / "vlm"
    vlm.mkdir()
    (vlm / "config.json").write_text("{}")  # a config but no weights: the load would fail after the run started
    assert weights("mllm", str(vlm), False, vlm=True).problems == [
        f"mllm.model {vlm}: no weight files (*.safetensors or *.bin) in the folder; point it at a complete "
        "transformers model folder (one saved by save_pretrained)"
    ]
    (vlm / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    (vlm / "model-00001-of-00002.safetensors").write_bytes(NO_TENSORS)  # the first of two shards
    assert weights("mllm", str(vlm), False, vlm=True).problems == [
        f"mllm.model {vlm}: no model-00002-of-00002.safetensors in the folder (model.safetensors.index.json names "
        "it); point it at a complete transformers model folder (one saved by save_pretrained)"
    ]
    sd = Path(shutil.copytree(tiny_sd_dir, tmp_path / "sd"))
    for file in (sd / "unet").glob("*.safetensors"):
        file.unlink()
    shutil.rmtree(sd / "vae")
    assert weights("generator", str(sd), False).problems == [
        f"generator.model {sd}: no weight files (*.safetensors or *.bin) in unet/, no vae/ in the folder "
        "(model_index.json names it); point it at a complete diffusers model folder (one saved by save_pretrained)"
    ]
    # A path that is not there is a path, not a hub id, whatever its form; the hub is never asked about it.
    monkeypatch.chdir(tmp_path)
    for path in ("./no-such-model", "../no-such-model", "~/no-such-model-gems", str(tmp_path / "gone")):
        problems = weights("generator", path, False).problems
        assert problems == [
            f"generator.model {path}: no such folder; point it at a complete diffusers model folder (one saved by "
            "save_pretrained)"
        ]
    # `~` of a user this machine does not have, and a name too long to be a path: one line, not a crash.
    assert weights("generator", "~nosuchuser-gems/models/sd", False).problems == [
        "generator.model ~nosuchuser-gems/models/sd: no such folder; point it at a complete diffusers model folder "
        "(one saved by save_pretrained)"
    ]
    assert weights("generator", "/" + "x" * 300, False).problems[0].startswith("generator.model /xxx")
    (vlm / "model-00002-of-00002.safetensors").write_bytes(NO_TENSORS[:-1])  # the second, cut short
    assert weights("mllm", str(vlm), False, vlm=True).problems == [
        f"mllm.model {vlm}: a damaged model-00002-of-00002.safetensors in the folder (cut short, or not a safetensors "
        "file); point it at a complete transformers model folder (one saved by save_pretrained)"
    ]
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    assert "a file, not a model folder" in weights("mllm", "model.safetensors", False, vlm=True).problems[0]


def test_an_index_of_a_format_left_out_of_the_download_is_not_a_missing_part(tmp_path):
    vlm = tmp_path / "vlm"  # hf download --include "*.safetensors" "*.json": both indexes, one format's shards
    vlm.mkdir()
    (vlm / "config.json").write_text("{}")
    shards = {"safetensors": "model-0000{}-of-00002.safetensors", "bin": "pytorch_model-0000{}-of-00002.bin"}
    for kind, name in shards.items():
        index = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
        (vlm / index).write_text(json.dumps({"weight_map": {"a": name.format(1), "b": name.format(2)}}))
    for i in (1, 2):
        (vlm / shards["safetensors"].format(i)).write_bytes(NO_TENSORS)
    assert weights("mllm", str(vlm), False, vlm=True).problems == []
    # But a download that stopped before any shard arrived is not whole, whatever a training run left beside it.
    for i in (1, 2):
        (vlm / shards["safetensors"].format(i)).unlink()
    (vlm / "training_args.bin").write_bytes(b"not weights")
    assert weights("mllm", str(vlm), False, vlm=True).problems == [
        f"mllm.model {vlm}: no weight files (*.safetensors or *.bin) in the folder; point it at a complete "
        "transformers model folder (one saved by save_pretrained)"
    ]


def test_a_hub_model_partly_in_the_cache_is_not_taken_as_there(tmp_path):
    cache = hub_cache(
        tmp_path / "hub", "acme/config-only", marker="config.json", weights=False
    )  # AutoConfig fetched just this
    assert weights("mllm", "acme/config-only", True, cache, vlm=True).problems == [
        "cannot load the in-process model 'acme/config-only': it is only partly in the Hugging Face cache (no weight "
        "files (*.safetensors or *.bin) in the folder) and HF_HUB_OFFLINE is set: download it first (hf download "
        "acme/config-only) or set mllm.model to a local folder"
    ]


class Hub:
    """An endpoint standing in for the hub: counts the requests it answers."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                seen.append(f"{self.command} {self.path}")
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hub() -> Iterator[Hub]:
    stub = Hub()
    yield stub
    stub.server.shutdown()
    stub.server.server_close()


def hub_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str) -> GemsSettings:
    """A run with an in-process MLLM and a diffusers generator, both hub ids not in an empty cache; online."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    return GemsSettings.model_validate({
        "mllm": {"backend": "transformers", "model": "acme/tiny-vlm", "device": "cpu"},
        "generator": {"backend": "diffusers", "preset": None, "model": "acme/tiny-sd", "device": "cpu"},
        "memory": {"lessons": False},
    })  # fmt: skip


def test_hub_models_not_here_stop_the_run_when_the_hub_cannot_be_reached(tmp_path, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens: a machine without network
    found = asyncio.run(check_run(hub_settings(tmp_path, monkeypatch, endpoint)))
    assert found.problems == [
        f"cannot load the in-process model 'acme/tiny-vlm': it is not in the Hugging Face cache and {endpoint} cannot "
        "be reached; download it where there is network (hf download acme/tiny-vlm) and copy the cache, or set "
        "mllm.model to a local folder",
        f"generator model acme/tiny-sd is not in the Hugging Face cache and {endpoint} cannot be reached; download "
        "it where there is network (hf download acme/tiny-sd) and copy the cache, or set generator.model to a local "
        "folder",
    ]


def test_a_hub_that_answers_is_asked_once_and_the_download_waits_for_first_use(tmp_path, monkeypatch, hub):
    settings = hub_settings(tmp_path, monkeypatch, hub.url)
    found = asyncio.run(check_run(settings))
    assert found.problems == []
    assert [n for n in found.notes if "first use" in n] == [
        "check      mllm acme/tiny-vlm: not in the Hugging Face cache; it will be downloaded on first use (or "
        "fetch it now: hf download acme/tiny-vlm)",
        "check      generator acme/tiny-sd: not in the Hugging Face cache; it will be downloaded on first use (or "
        "fetch it now: hf download acme/tiny-sd)",
    ]
    assert len(hub.requests) == 1  # one probe for both models
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: nothing to ask, the cache decides
    assert asyncio.run(check_run(settings)).problems and len(hub.requests) == 1


@pytest.mark.slow
def test_missing_weights_stop_the_cli_before_any_model_call(mllm_server, tmp_path):
    mllm, script = mllm_server(criteria=["Is there a cat?"])
    generator = {"backend": "diffusers", "preset": "sd-turbo", "device": "cpu"}
    cfg = write_stub_config(tmp_path / "c.yaml", mllm.base_url, None, generator=generator)
    env = {"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    result = gems("generate", "a cat", "--config", str(cfg), "--thread-id", "w1", env_extra=env)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "gems: error: generator model stabilityai/sd-turbo is not in the Hugging Face cache and HF_HUB_OFFLINE is "
        "set: download it first (hf download stabilityai/sd-turbo) or set generator.model to a local folder"
    ]
    assert mllm.requests == [] and sum(script.calls.values()) == 0  # no MLLM call was paid for
    assert f"check      MLLM endpoint {mllm.base_url} answers (model stub-vlm)" in result.stderr  # what passed, too
    assert "During task" not in result.stderr and "--resume" not in result.stderr  # nothing ran, nothing saved


@pytest.mark.slow
def test_every_problem_is_its_own_line(tmp_path):
    dead_mllm, dead_gen = f"http://127.0.0.1:{free_port()}/v1", f"http://127.0.0.1:{free_port()}/generate"
    cfg = write_stub_config(tmp_path / "c.yaml", dead_mllm, dead_gen)
    result = gems("generate", "a cat", "--config", str(cfg))
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"gems: error: cannot reach the MLLM endpoint {dead_mllm} (model stub-vlm); start the server or set "
        "GEMS_MLLM_BASE_URL / mllm.base_url",
        f"gems: error: cannot reach the generator server {dead_gen}; start it or set GEMS_GENERATOR_URL / "
        "generator.url",
    ]


@pytest.mark.slow
def test_no_network_stops_the_cli_before_the_run_with_no_resume_hint(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "mllm: {backend: transformers, model: acme/tiny-vlm, device: cpu}\n"
        "generator: {backend: diffusers, preset: null, model: acme/tiny-sd, device: cpu}\nmemory: {lessons: false}\n"
    )
    env = {"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint}
    result = gems("generate", "a cat", "--config", str(cfg), "--thread-id", "n1", env_extra=env, timeout=60)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 2 and all(f"{endpoint} cannot be reached" in line for line in lines)
    assert "--resume" not in result.stderr and "Retry" not in result.stderr
