"""`gems serve-generator` on a local Ray (CPU): a tiny random-weight pipeline in 2 replicas behind both protocols.

Ray and the application start once for this module (about 15 s); every test talks to the same service over HTTP.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

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
pytestmark = pytest.mark.slow
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
        ray_init={"num_cpus": 4, "log_to_driver": False},
    )  # fmt: skip
    yield url
    serve.shutdown()
    ray.shutdown()


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=30).json()


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
    assert httpx.get(f"{service}/health", timeout=30).status_code == 200  # probes need no key

    def images(body: dict) -> httpx.Response:
        return httpx.post(f"{service}/v1/images/generations", json=body, headers=AUTH, timeout=30)

    assert images({"prompt": "x", "size": "32x5000"}).status_code == 422
    assert images({"prompt": "x", "n": 99}).status_code == 422
    url_format = images({"prompt": "x", "response_format": "url"})
    assert url_format.status_code == 400 and "b64_json" in url_format.json()["detail"]
    # A size the pipeline cannot render is the pipeline's one-line error, not a retryable 5xx.
    odd = images({"prompt": "x", "size": "65x65"})
    assert odd.status_code == 422 and odd.json()["detail"].startswith("diffusers pipeline"), odd.text


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
    assert status["retried_after_replica_failure"] >= 1 and status["replicas"].get("RUNNING") == 2


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
    assert junk.status_code == 422 and "not an image" in junk.json()["detail"]
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
        assert httpx.get(f"{service}/klein/health", timeout=30).json()["images"] == 5
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
