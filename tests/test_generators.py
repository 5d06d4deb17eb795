"""Generator backends on real code paths: a tiny diffusers pipeline from a local folder, local HTTP servers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image

from gems.configs import ConfigError, GeneratorSettings
from gems.graph import build_graph, run_config
from gems.nodes.generators import GeneratorError, effective_settings, get_generator
from tests.conftest import make_settings
from tests.support.aio import one_image
from tests.support.servers import HTTPFailure, OpenAIStub, png_bytes


def tiny_settings(folder, **extra) -> GeneratorSettings:
    return GeneratorSettings(
        backend="diffusers", preset=None, model=str(folder), width=64, height=64, steps=2, device="cpu", **extra
    )


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_diffusers_loads_local_folder_once_and_seeds_reproducibly(tiny_sd_dir):
    from gems.nodes.generators import diffusers_backend

    generator = get_generator(tiny_settings(tiny_sd_dir))
    assert type(generator.pipe).__name__ == "StableDiffusionPipeline"
    first = one_image(generator.render("a red cube", [3]))
    again = one_image(generator.render("a red cube", [3]))
    other = one_image(generator.render("a red cube", [4]))
    assert Image.open(io.BytesIO(first.data)).size == (64, 64)
    assert np.abs(pixels(first.data) - pixels(again.data)).max() <= 1
    assert np.abs(pixels(first.data) - pixels(other.data)).max() > 1
    assert first.meta.pop("busy_s") > 0
    assert first.meta == {
        "backend": "diffusers",
        "model": str(tiny_sd_dir),
        "seed": 3,
        "steps": 2,
        "guidance_scale": None,
    }
    # Same settings -> same object; a new generator for other sizes reuses the loaded pipeline.
    assert get_generator(tiny_settings(tiny_sd_dir)) is generator
    bigger = get_generator(tiny_settings(tiny_sd_dir).model_copy(update={"width": 32, "height": 32}))
    assert bigger.pipe is generator.pipe
    assert len([k for k in diffusers_backend._pipelines if k[0] == str(tiny_sd_dir)]) == 1


def test_diffusers_rejects_call_kwargs_the_pipeline_does_not_take(tiny_sd_dir):
    generator = get_generator(tiny_settings(tiny_sd_dir, call_kwargs={"true_cfg_scale": 4.0}))
    with pytest.raises(GeneratorError, match=r"StableDiffusionPipeline does not accept generator.call_kwargs"):
        one_image(generator.render("x", [1]))


def test_diffusers_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(GeneratorError, match=r"cannot load diffusers model .*set generator.model to a local folder"):
        get_generator(GeneratorSettings(backend="diffusers", preset=None, model=str(tmp_path / "nothing-here")))


def test_full_loop_with_the_diffusers_backend(tiny_sd_dir, mllm_server, isolated_env):
    mllm, _ = mllm_server(criteria=["Is there a cube?"], verdict=lambda q, n: "yes" if n >= 2 else "no")
    settings = make_settings(
        mllm, None, isolated_env, generator=tiny_settings(tiny_sd_dir).model_dump(mode="json"), loop={"seed": 11}
    )
    graph = build_graph(checkpointer=InMemorySaver())
    config = run_config(settings, "d1")
    graph.invoke({"prompt": "a red cube"}, config, context=settings)
    values = graph.get_state(config).values
    seeds = [r["image"]["seed"] for r in values["rounds"]]
    assert values["success"] is True and seeds == [11, 12]
    assert values["rounds"][0]["image"]["backend"] == "diffusers" and values["rounds"][0]["image"]["width"] == 64


def test_presets_fill_gaps_and_explicit_values_win():
    zit = effective_settings(GeneratorSettings())
    assert (zit.model, zit.width, zit.steps, zit.guidance_scale, zit.dtype) == (
        "Tongyi-MAI/Z-Image-Turbo",
        1024,
        9,
        0.0,
        "bfloat16",
    )
    qwen = effective_settings(GeneratorSettings(preset="qwen-image-2512", steps=30, call_kwargs={"x": 1}))
    assert (qwen.width, qwen.steps, qwen.call_kwargs) == (1328, 30, {"true_cfg_scale": 4.0, "x": 1})
    own = effective_settings(GeneratorSettings(preset="sd-turbo", model="/models/my-sd-turbo"))
    assert own.model == "/models/my-sd-turbo" and own.steps == 1
    with pytest.raises(ConfigError, match=r"unknown generator\.preset 'flux9'"):
        effective_settings(GeneratorSettings(preset="flux9"))


def test_http_backend_speaks_the_reference_protocol(gen_server):
    gen = gen_server()
    generator = get_generator(GeneratorSettings(backend="http", preset=None, url=gen.url, model="zit-server"))
    rendered = one_image(generator.render("a blue bird & a cat", [5]))
    assert gen.prompts == ["a blue bird & a cat"]
    assert Image.open(io.BytesIO(rendered.data)).format == "PNG"
    assert (
        rendered.meta["backend"] == "http" and rendered.meta["seed"] == 1001 and rendered.meta["model"] == "zit-server"
    )


def test_http_backend_retries_transient_errors(gen_server):
    gen = gen_server(fail_first=2, status=503)
    generator = get_generator(GeneratorSettings(backend="http", preset=None, url=gen.url, max_retries=2))
    one_image(generator.render("x", [1]))
    assert len(gen.prompts) == 3


def test_http_backend_does_not_retry_client_errors_and_rejects_non_images(gen_server):
    gen = gen_server(fail_first=1, status=400)
    generator = get_generator(GeneratorSettings(backend="http", preset=None, url=gen.url, max_retries=3))
    with pytest.raises(GeneratorError, match="answered HTTP 400"):
        one_image(generator.render("x", [1]))
    assert len(gen.prompts) == 1


def test_openai_backend_posts_generations_and_decodes_b64(isolated_env):
    seen = []

    def images(body):
        seen.append(body)
        if len(seen) == 1:
            raise HTTPFailure(502, "warming up")
        return png_bytes((10, 200, 30), size=48)

    server = OpenAIStub(images=images).start()
    try:
        settings = GeneratorSettings(
            backend="openai", preset=None, url=server.base_url, model="Qwen/Qwen-Image", width=48, height=48, steps=20
        )
        rendered = one_image(get_generator(settings).render("a green square", [9]))
    finally:
        server.stop()
    assert seen[-1] == {
        "model": "Qwen/Qwen-Image",
        "prompt": "a green square",
        "n": 1,
        "size": "48x48",
        "response_format": "b64_json",
        "seed": 9,
        "num_inference_steps": 20,
    }
    assert len(seen) == 2  # the 502 was retried
    assert Image.open(io.BytesIO(rendered.data)).getpixel((0, 0)) == (10, 200, 30)
    assert rendered.meta.pop("busy_s") > 0
    assert rendered.meta == {
        "backend": "openai",
        "model": "Qwen/Qwen-Image",
        "seed": 9,
        "steps": 20,
        "guidance_scale": None,
    }


def test_openai_backend_needs_url_and_model():
    with pytest.raises(GeneratorError, match=r"generator\.url is not set"):
        get_generator(GeneratorSettings(backend="openai", preset=None, model="m"))
    with pytest.raises(GeneratorError, match=r"generator\.model is not set"):
        get_generator(GeneratorSettings(backend="openai", preset=None, url="http://127.0.0.1:9/v1"))


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    from tests.support.tiny_pipelines import tiny_qwen_image, tiny_z_image

    folders = {}
    for name, build in (("z-image", tiny_z_image), ("qwen-image", tiny_qwen_image)):
        folder = tmp_path_factory.mktemp(name)
        build().save_pretrained(folder)
        folders[name] = folder
    return folders


def test_z_image_turbo_preset_drives_a_real_z_image_pipeline(tiny_folders):
    settings = GeneratorSettings(
        backend="diffusers", preset="z-image-turbo", model=str(tiny_folders["z-image"]), width=64, height=64,
        device="cpu", call_kwargs={"max_sequence_length": 64},
    )  # fmt: skip
    generator = get_generator(settings)
    rendered = one_image(generator.render("a red cube", [1]))
    assert type(generator.pipe).__name__ == "ZImagePipeline"
    assert (rendered.meta["steps"], rendered.meta["guidance_scale"]) == (9, 0.0)  # the reference server's settings
    assert Image.open(io.BytesIO(rendered.data)).size == (64, 64)


def test_qwen_image_preset_uses_true_cfg(tiny_folders):
    base = dict(backend="diffusers", preset="qwen-image-2512", model=str(tiny_folders["qwen-image"]), width=64,
                height=64, steps=2, device="cpu")  # fmt: skip
    with_cfg = get_generator(GeneratorSettings(**base, call_kwargs={"max_sequence_length": 64}))
    assert type(with_cfg.pipe).__name__ == "QwenImagePipeline"
    assert with_cfg.settings.call_kwargs["true_cfg_scale"] == 4.0 and with_cfg.settings.negative_prompt == " "
    no_cfg = get_generator(GeneratorSettings(**base, call_kwargs={"max_sequence_length": 64, "true_cfg_scale": 1.0}))
    assert no_cfg.pipe is with_cfg.pipe  # one pipeline, loaded once
    calls = []
    hook = with_cfg.pipe.transformer.register_forward_hook(lambda *args: calls.append(1))
    try:
        one_image(with_cfg.render("a red cube", [1]))
        guided = len(calls)
        one_image(no_cfg.render("a red cube", [1]))
    finally:
        hook.remove()
    # Real classifier-free guidance runs the transformer twice per step (prompt and negative prompt).
    assert (guided, len(calls) - guided) == (4, 2)


def test_candidates_of_a_round_render_in_one_batch(tiny_sd_dir, mllm_server, isolated_env):
    generator = get_generator(tiny_settings(tiny_sd_dir))
    calls = []
    hook = generator.pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    try:
        batch = generator.render_many("a red cube", [5, 6, 7])
        batched_calls = len(calls)
        single = one_image(generator.render("a red cube", [6]))
    finally:
        hook.remove()
    assert batched_calls == 2  # 2 steps for all three images together, not 6
    assert [r.meta["seed"] for r in batch] == [5, 6, 7]
    assert np.abs(pixels(batch[1].data) - pixels(single.data)).max() <= 1  # a batch image = its seed alone
    assert np.abs(pixels(batch[0].data) - pixels(batch[2].data)).max() > 1

    mllm, script = mllm_server(criteria=["Is there a cube?"], verdict=lambda q, n: "yes" if n == 3 else "no")
    settings = make_settings(
        mllm, None, isolated_env, generator=tiny_settings(tiny_sd_dir).model_dump(mode="json"),
        loop={"seed": 100, "images_per_round": 3, "max_rounds": 1}, skills={"enabled": False},
    )  # fmt: skip
    graph = build_graph(checkpointer=InMemorySaver())
    values = graph.invoke({"prompt": "a red cube"}, run_config(settings, "b"), context=settings)
    record = values["rounds"][0]
    assert [c["seed"] for c in record["candidates"]] == [100, 101, 102] and script.calls["verify"] == 3
    # Parallel verifier calls arrive in any order; whichever candidate got the one "yes" must be the one kept.
    assert values["success"] is True and record["verdicts"][0]["passed"] is True
    assert record["verdicts"][0]["candidate"] == record["image"]["candidate"]
