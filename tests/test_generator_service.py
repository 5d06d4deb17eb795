"""`gems serve-generator` on a local Ray (CPU): a tiny random-weight pipeline in 2 replicas behind both protocols.

Ray and the application start once for this module (about 15 s); every test talks to the same service over HTTP.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from gems.configs import ConfigError, GeneratorSettings
from gems.interfaces.benchmarks.runner import run_bench
from tests.conftest import make_settings
from tests.support.aio import one_image
from tests.support.net import free_port, write_stub_config
from tests.test_cli import gems

ray = pytest.importorskip("ray", reason="the scale extra (Ray Serve) is not installed")
# Starting Ray, its proxy and two replicas takes minutes when every core is busy with something else.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
KEY = "sk-generator-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def service(tiny_sd_dir):
    from ray import serve

    from gems.interfaces import generator_service

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    settings = GeneratorSettings(
        backend="diffusers", preset=None, model=str(tiny_sd_dir), width=32, height=32, steps=2, device="cpu"
    )
    url = generator_service.start(
        settings, replicas=2, max_batch_size=8, batch_wait_ms=100, port=free_port(), api_key=KEY,
        request_timeout_s=120, keep_alive_s=2, ray_init={"num_cpus": 4, "log_to_driver": False},
    )  # fmt: skip
    yield url
    serve.shutdown()
    ray.shutdown()


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", headers=AUTH, timeout=30).json()


def test_both_protocols_batch_concurrent_requests_and_each_image_equals_its_seed_alone(service):
    before = health(service)

    def reference(i: int) -> httpx.Response:
        return httpx.post(f"{service}/generate", params={"prompt": f"cube {i}", "seed": i}, headers=AUTH, timeout=60)

    def openai(i: int) -> httpx.Response:
        body = {"model": "tiny", "prompt": f"sphere {i}", "seed": 100 + i, "n": 2 if i == 0 else 1, "size": "32x32"}
        return httpx.post(f"{service}/v1/images/generations", json=body, headers=AUTH, timeout=60)

    with ThreadPoolExecutor(16) as pool:
        refs = list(pool.map(reference, range(8)))
        oais = list(pool.map(openai, range(8)))
    assert [r.status_code for r in refs + oais] == [200] * 16
    assert [int(r.headers["x-seed"]) for r in refs] == list(range(8))
    assert all(Image.open(io.BytesIO(r.content)).size == (32, 32) for r in refs)
    first = oais[0].json()["data"]
    assert [d["seed"] for d in first] == [100, 101] and all(len(base64.b64decode(d["b64_json"])) > 100 for d in first)

    after = health(service)
    images = after["images"] - before["images"]
    calls = after["pipeline_calls"] - before["pipeline_calls"]
    assert images == 17 and calls < images and after["largest_batch"] > 1, after
    assert after["replicas"] == {"RUNNING": 2} and after["queue_depth"] == 0

    # Batched images equal the same seed rendered alone (one request at a time: a batch of one).
    alone = httpx.post(f"{service}/generate", params={"prompt": "cube 5", "seed": 5}, headers=AUTH, timeout=60)
    assert np.abs(pixels(alone.content) - pixels(refs[5].content)).max() <= 1
    body = {"prompt": "sphere 3", "seed": 103, "size": "32x32"}
    alone = httpx.post(f"{service}/v1/images/generations", json=body, headers=AUTH, timeout=60)
    batched = base64.b64decode(oais[3].json()["data"][0]["b64_json"])
    assert np.abs(pixels(base64.b64decode(alone.json()["data"][0]["b64_json"])) - pixels(batched)).max() <= 1
    assert np.abs(pixels(refs[5].content) - pixels(refs[6].content)).max() > 1  # seeds do differ


def test_key_and_bad_requests_get_clear_answers(service):
    assert httpx.post(f"{service}/generate", params={"prompt": "x"}, timeout=30).status_code == 401
    wrong = httpx.post(f"{service}/generate", params={"prompt": "x"}, headers={"X-API-Key": "nope"}, timeout=30)
    assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]

    def images(body: dict) -> httpx.Response:
        return httpx.post(f"{service}/v1/images/generations", json=body, headers=AUTH, timeout=30)

    assert images({"prompt": "x", "size": "32x5000"}).status_code == 422
    assert images({"prompt": "x", "n": 99}).status_code == 422
    url_format = images({"prompt": "x", "response_format": "url"})
    assert url_format.status_code == 400 and "b64_json" in url_format.json()["detail"]
    # A size the pipeline cannot render is the pipeline's one-line error, not a retryable 5xx.
    odd = images({"prompt": "x", "size": "65x65"})
    assert odd.status_code == 422 and odd.json()["detail"].startswith("diffusers pipeline"), odd.text


def raw_post(url: str, path: str, headers: dict[str, str], chunks: Iterable[bytes] = ()) -> tuple[int, str]:
    """POST over a bare socket: `chunks` go out as sent (no terminating chunk unless given), then the answer is read.

    A body that never ends can only be answered by a server that checks it while it streams in."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in {"host": parts.netloc, **headers}.items())
        sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode())
        for chunk in chunks:
            sock.sendall(chunk)
        response = http.client.HTTPResponse(sock)
        response.begin()
        text = response.read().decode("utf-8", "replace")
        return response.status, json.loads(text)["detail"] if text.startswith("{") else text[:200]


def chunked(*pieces: bytes, size: int = 2**20) -> Iterable[bytes]:
    """`pieces` in HTTP/1.1 chunked framing, without the final empty chunk (the body stays open)."""
    for piece in pieces:
        for i in range(0, len(piece), size):
            yield b"%x\r\n%s\r\n" % (len(piece[i : i + size]), piece[i : i + size])


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` in its header and holds no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def multipart(fields: dict[str, str], image: bytes | None = None, boundary: str = "gemsboundary") -> bytes:
    out = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    )
    if image is not None:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="in.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode() + image
    return out


def test_bodies_and_file_parts_are_refused_at_their_limit_while_they_stream_in(service):
    from gems.interfaces.generator_service import MAX_BODY_BYTES, MAX_IMAGE_BYTES

    form = {"content-type": "multipart/form-data; boundary=gemsboundary"}
    # A declared size over the limit: 413 before one byte of the body is read (none is ever sent), on every route.
    huge = {**AUTH, "content-type": "application/json", "content-length": str(2**31)}
    for path in ("/generate?prompt=x", "/v1/images/generations", "/v1/images/edits"):
        status, detail = raw_post(service, path, huge)
        assert status == 413 and detail.startswith("the request body is over"), (path, detail)
    # Chunked uploads declare nothing: a JSON body past 1 MiB, and an image part past 32 MiB, are refused while
    # they stream in (the bodies never end, so only a server that counts as it reads can answer).
    stream = {**AUTH, "transfer-encoding": "chunked"}
    status, detail = raw_post(service, "/v1/images/generations", stream, chunked(b" " * (MAX_BODY_BYTES + 2**16)))
    assert (status, detail) == (413, f"the request body is over {MAX_BODY_BYTES} bytes")
    part = multipart({"prompt": "x"}, b"\0" * (MAX_IMAGE_BYTES + 2**16))
    status, detail = raw_post(service, "/v1/images/edits", {**stream, **form}, chunked(part))
    assert (status, detail) == (413, "a file part is over 32 MiB")
    # The key is checked before the size.
    keyless = {k: v for k, v in huge.items() if k != "Authorization"}
    assert raw_post(service, "/v1/images/edits", {**keyless, **form})[0] == 401


def test_images_are_refused_from_their_header_on_every_path_that_reads_one(service):
    from ray import serve

    from gems.interfaces.generator_service import APP_NAME, REPLICA

    form = {"prompt": "make it blue", "seed": "4"}
    for side in (20000, 5000):  # past PIL's own bomb limit (its error was a 500), and past ours only
        files = {"image": ("big.png", png_header(side, side), "image/png")}
        answer = httpx.post(f"{service}/v1/images/edits", data=form, files=files, headers=AUTH, timeout=30)
        assert answer.status_code == 413 and answer.json()["detail"] == "the image has more than 4096x4096 pixels"
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    files = {"image": ("in.gif", gif.getvalue(), "image/gif")}
    answer = httpx.post(f"{service}/v1/images/edits", data=form, files=files, headers=AUTH, timeout=30)
    assert answer.status_code == 422 and "not a PNG, JPEG or WebP" in answer.json()["detail"]
    # A replica called through its handle (not through the gateway) checks the header too.
    replica = serve.get_deployment_handle(REPLICA, app_name=APP_NAME)
    result = replica.edit.remote({"prompt": "x", "seed": 1, "image": png_header(20000, 20000)}).result()
    assert result == {"error": "the image has more than 4096x4096 pixels", "status": 413}


HOSTILE = [
    # (route, query or JSON body or form, the parameter named, raw text the answer must not repeat)
    ("/generate", {"prompt": "x", "width": "99999", "height": "64"}, "width", "99999"),
    ("/generate", {"prompt": "x", "num_inference_steps": "100000"}, "num_inference_steps", "100000"),
    ("/generate", {"prompt": "x", "seed": "-1"}, "seed", "-1"),
    ("/generate", {"prompt": "x", "seed": "abc"}, "seed", "abc"),
    ("/generate", {"prompt": "x", "guidance_scale": "nan"}, "guidance_scale", "nan"),
    ("/generate", {"prompt": "x", "guidance_scale": "inf"}, "guidance_scale", "inf"),
    ("/generate", {"prompt": ""}, "prompt", None),
    ("/generate", {"prompt": "   "}, "prompt", None),
    ("/generate", {"seed": "3"}, "prompt", None),
    ("/generate", {"prompt": "x", "negative_prompt": "q" * 5000}, "negative_prompt", "qqqq"),
    ("/v1/images/generations", {"prompt": "x", "size": "99999x99999"}, "size", "99999"),
    ("/v1/images/generations", {"prompt": "x", "size": "bigxbig"}, "size", "big"),
    ("/v1/images/generations", {"prompt": "x", "n": 99}, "n", "99"),
    ("/v1/images/generations", {"prompt": "x", "n": "many"}, "n", "many"),
    ("/v1/images/generations", {"prompt": "x", "seed": -1}, "seed", "-1"),
    ("/v1/images/generations", {"prompt": "x", "num_inference_steps": 100000}, "num_inference_steps", "100000"),
    ("/v1/images/generations", '{"prompt": "x", "guidance_scale": NaN}', "guidance_scale", "NaN"),
    ("/v1/images/generations", {"prompt": ""}, "prompt", None),
    ("/v1/images/generations", "{not json", "body", "not json"),
    ("/v1/images/generations", "[1, 2]", "body", None),
    ("/v1/images/edits", {"prompt": "x", "size": "99999x99999"}, "size", "99999"),
    ("/v1/images/edits", {"prompt": "x", "n": "99"}, "n", "99"),
    ("/v1/images/edits", {"prompt": "x", "guidance_scale": "nan"}, "guidance_scale", "nan"),
]


def test_hostile_parameters_get_a_one_line_422_naming_the_parameter(service):
    from tests.support.servers import png_bytes

    for route, params, name, hostile in HOSTILE:
        if route == "/generate":
            answer = httpx.post(f"{service}{route}", params=params, headers=AUTH, timeout=30)
        elif route.endswith("edits"):
            files = {"image": ("in.png", png_bytes((200, 30, 30), size=64), "image/png")}
            answer = httpx.post(f"{service}{route}", data=params, files=files, headers=AUTH, timeout=30)
        else:
            body = params if isinstance(params, str) else json.dumps(params)
            answer = httpx.post(f"{service}{route}", content=body, headers=AUTH, timeout=30)
        detail = answer.json()["detail"]
        assert answer.status_code == 422 and isinstance(detail, str), (route, params, answer.text)
        assert detail.startswith(f"{name}: ") and "\n" not in detail and len(detail) < 300, (route, params, detail)
        assert hostile is None or hostile.lower() not in detail.lower(), (route, params, detail)


def test_health_tells_a_caller_without_the_key_only_that_it_is_alive(service):
    assert httpx.get(f"{service}/health", timeout=30).json() == {"ok": True}
    assert httpx.get(f"{service}/health", headers={"X-API-Key": "nope"}, timeout=30).json() == {"ok": True}
    details = httpx.get(f"{service}/health", headers=AUTH, timeout=30).json()
    assert details["ok"] is True and details["model"] and details["replicas"] == {"RUNNING": 2}


def test_serve_proxy_timeouts_are_set_and_its_override_headers_refused(service):
    from ray import serve

    # Serve's proxy closes a connection idle past keep_alive_s (2 s here; Serve's own default is 90 s).
    parts = urlsplit(service)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"GET /health HTTP/1.1\r\nhost: {parts.netloc}\r\n\r\n".encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200 and response.read()
        assert sock.recv(1) == b""  # closed by the server (a socket timeout here fails the test)
    # The request timeout reaches the proxy (read back from Serve's client; a timed test would take minutes).
    assert serve.context._get_global_client().http_config.request_timeout_s == 120
    # A client may not lift that timeout, or keep its request running after it leaves.
    for header, value in (("x-request-timeout-seconds", "0"), ("x-request-disconnect-disabled", "?1")):
        answer = httpx.post(f"{service}/generate", params={"prompt": "x"}, headers={**AUTH, header: value}, timeout=30)
        assert answer.status_code == 400 and answer.json()["detail"] == f"the {header} header is not accepted here"


def test_a_replica_killed_mid_request_is_retried_and_the_service_keeps_serving(service):
    result: dict = {}

    def slow() -> None:
        params = {"prompt": "slow", "seed": 1, "num_inference_steps": 300}
        result["response"] = httpx.post(f"{service}/generate", params=params, headers=AUTH, timeout=120)

    worker = threading.Thread(target=slow)
    worker.start()
    deadline = time.monotonic() + 20
    while health(service)["queue_depth"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Kill every pipeline replica while the request renders: the gateway retries once Ray has replaced them.
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "#GemsGenerator#" in a["name"]]
    assert len(replicas) == 2
    for actor in replicas:
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
    worker.join(timeout=120)
    response = result["response"]
    if response.status_code != 200:  # the other allowed outcome: one clear line saying to retry
        assert response.status_code == 503 and "replica failed mid-request" in response.json()["detail"]
    again = httpx.post(f"{service}/generate", params={"prompt": "after", "seed": 2}, headers=AUTH, timeout=120)
    assert again.status_code == 200
    status = health(service)
    assert status["retried_after_replica_failure"] >= 1
    # Ray starts the replacements in its own time (minutes on a busy machine): wait for both, however long it takes.
    deadline = time.monotonic() + 600
    while status["replicas"].get("RUNNING") != 2 and time.monotonic() < deadline:
        time.sleep(1)
        status = health(service)
    assert status["replicas"].get("RUNNING") == 2, status["replicas"]


def test_gems_generate_and_bench_run_through_the_service(service, mllm_server, isolated_env, tmp_path):
    mllm, script = mllm_server(criteria=["Is there a cube?"], verdict=lambda q, n: "yes")
    before = health(service)
    # gems generate (a real subprocess) through the reference protocol, the key sent as a Bearer header.
    ref = {"backend": "http", "url": f"{service}/generate", "api_key": KEY}
    path = write_stub_config(tmp_path / "ref.yaml", mllm.base_url, None, generator=ref, loop={"seed": 7})
    done = gems("generate", "a red cube", "--config", str(path), "--out", str(tmp_path / "one"))
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "one" / "final.png").size == (32, 32)
    image = json.loads((tmp_path / "one" / "trajectory.json").read_text())["rounds"][0]["image"]
    assert image["backend"] == "http" and image["seed"] == 7  # the seed went out and came back in x-seed

    # gems bench through OpenAI's images API.
    oai = {"backend": "openai", "url": f"{service}/v1", "model": "tiny", "api_key": KEY, "width": 32, "height": 32}
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a cube number {i}" for i in range(6)))
    settings = make_settings(mllm, None, isolated_env, generator=oai, skills={"enabled": False}, loop={"seed": 3})
    summary = run_bench(prompts, settings, "gems", tmp_path / "bench", concurrency=6, scorer="none", progress=False)
    assert summary["finished"] == 6 and summary["errors"] == []
    records = [json.loads(p.read_text()) for p in (tmp_path / "bench" / "results").glob("*.json")]
    assert {r["rounds"][0]["image"]["backend"] for r in records} == {"openai"}
    after = health(service)
    # One round each (every criterion passes): 1 + 6 images through the service, each verified.
    assert after["images"] - before["images"] == 7 and script.calls["verify"] == 7


def test_edits_where_the_pipeline_takes_an_image_and_a_clear_400_where_not(service, tmp_path):
    from ray import serve

    from gems.interfaces.generator_service import build_app
    from gems.nodes.generators import get_editor
    from tests.support.servers import png_bytes
    from tests.support.tiny_pipelines import save_tiny_flux2_klein

    source = png_bytes((200, 30, 30), size=64)
    form = {"prompt": "make it blue", "seed": "4", "size": "64x64"}
    files = {"image": ("in.png", source, "image/png")}
    sd = httpx.post(f"{service}/v1/images/edits", data=form, files=files, headers=AUTH, timeout=60)
    assert sd.status_code == 400 and "takes no input image, so it cannot edit" in sd.json()["detail"]
    assert httpx.post(f"{service}/v1/images/edits", json=form, headers=AUTH, timeout=30).status_code == 415
    junk = httpx.post(f"{service}/v1/images/edits", data=form, files={"image": ("x.png", b"no", "image/png")},
                      headers=AUTH, timeout=30)  # fmt: skip
    assert junk.status_code == 422 and "not a PNG, JPEG or WebP image" in junk.json()["detail"]
    assert httpx.post(f"{service}/v1/images/edits", data=form, files=files, timeout=30).status_code == 401

    # FLUX.2 [klein] renders from text and from a reference image: one service answers generations and edits.
    folder = save_tiny_flux2_klein(tmp_path / "klein")
    klein = GeneratorSettings(backend="diffusers", preset=None, model=str(folder), width=64, height=64, steps=2,
                              device="cpu", call_kwargs={"text_encoder_out_layers": [1]})  # fmt: skip
    serve.run(build_app(klein, api_key=KEY), name="gems-klein", route_prefix="/klein", blocking=False)
    base = f"{service}/klein/v1"
    deadline = time.monotonic() + 60
    while httpx.get(f"{service}/klein/health", timeout=30).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        editor = get_editor(GeneratorSettings(backend="openai", preset=None, url=base, model="klein", api_key=KEY,
                                              max_retries=0, width=64, height=64))  # fmt: skip
        first = one_image(editor.edit(source, "make it blue", [11]))
        again = one_image(editor.edit(source, "make it blue", [11]))
        assert first.meta["edit"] is True and first.meta["seed"] == 11
        assert Image.open(io.BytesIO(first.data)).size == (64, 64)
        assert np.abs(pixels(first.data) - pixels(again.data)).max() <= 1  # seeded
        other = one_image(editor.edit(png_bytes((20, 200, 30), size=64), "make it blue", [11]))
        assert np.abs(pixels(first.data) - pixels(other.data)).max() > 1  # the input image matters
        listed = httpx.post(f"{base}/images/edits", data={"prompt": "x", "n": "2", "seed": "1"},
                            files={"image[]": ("in.png", source, "image/png")}, headers=AUTH, timeout=60)  # fmt: skip
        assert [d["seed"] for d in listed.json()["data"]] == [1, 2]
        assert httpx.get(f"{service}/klein/health", headers=AUTH, timeout=30).json()["images"] == 5
    finally:
        serve.delete("gems-klein")


def test_settings_that_are_not_a_local_pipeline_are_refused():
    from gems.interfaces.generator_service import build_app

    with pytest.raises(ConfigError, match="renders with a local diffusers pipeline"):
        build_app(GeneratorSettings(backend="http", url="http://127.0.0.1:1/generate"))


def test_cli_without_ray_says_what_to_install(tmp_path):
    # A Python that cannot import ray: the command says which extra to install, in one line.
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "ray").mkdir()
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('no ray here', name='ray')\n")
    done = gems("serve-generator", env_extra={"PYTHONPATH": str(blocker)}, timeout=60)
    assert done.returncode == 2 and "pip install 'gems-agent[scale]'" in done.stderr
