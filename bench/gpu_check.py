"""The diffusers backend's CUDA path on a tiny random-weight pipeline: device and dtype choice, seeding, batching.

Prints one row per check; run it on a machine with a GPU (no weights or network needed):

    python bench/gpu_check.py [--size 64] [--steps 4] [--batch 4] [--ray]

Checks: `device: auto` picks CUDA and `dtype: auto` bf16 (fp16 where bf16 is missing); the pipeline's modules
sit on the GPU in that dtype; the same seed gives the same image twice; a batch of N seeds (one pipeline call)
matches each seed rendered alone; explicit float16 and `cpu_offload` render; and, for scale, per-image time for a
single render against a batch (a ratio, not a target). With `--ray` (the scale extra): `gems serve-generator` on a
local Ray with one replica per GPU renders concurrent requests on the GPUs in batches.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support (tiny pipelines built in code)

import numpy as np
from PIL import Image

from gems.configs import GeneratorSettings
from gems.nodes.generators import diffusers_backend
from gems.nodes.generators.diffusers_backend import DiffusersGenerator
from tests.support.tiny_pipelines import save_tiny_stable_diffusion


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--ray", action="store_true", help="also check GPU replicas of gems serve-generator")
    args = parser.parse_args()
    import torch

    rows: list[tuple[str, str, str]] = []
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def check(name: str, ok: bool, detail: str) -> None:
        rows.append((name, "ok" if ok else "FAIL", detail))

    check(
        "cuda available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_tiny_stable_diffusion(Path(tmp) / "tiny-sd")
        common = {"backend": "diffusers", "preset": None, "model": str(folder), "width": args.size,
                  "height": args.size, "steps": args.steps, "guidance_scale": 1.0}  # fmt: skip
        gen = DiffusersGenerator(GeneratorSettings(**common))
        pipe = gen.pipe
        dtype = pipe.unet.dtype
        want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        check("auto device", pipe._gems_device == "cuda", pipe._gems_device)
        check("auto dtype", dtype == want, str(dtype))
        check("modules on GPU", all(p.is_cuda for p in pipe.unet.parameters()) and pipe.vae.device.type == "cuda",
              f"unet {pipe.unet.device}, vae {pipe.vae.device}, text {pipe.text_encoder.device}")  # fmt: skip

        gen.render_many("warm up", [0])[0]
        sync()
        a, b = gen.render_many("a red cube", [7])[0], gen.render_many("a red cube", [7])[0]
        diff = int(np.abs(pixels(a.data) - pixels(b.data)).max())
        check("same seed twice", diff <= 1, f"max pixel diff {diff}")
        other = gen.render_many("a red cube", [8])[0]
        check("another seed differs", int(np.abs(pixels(a.data) - pixels(other.data)).max()) > 0, "seed 8 vs 7")

        seeds = list(range(100, 100 + args.batch))
        started = time.perf_counter()
        alone = [gen.render_many("a blue sphere", [s])[0] for s in seeds]
        sync()
        single_s = (time.perf_counter() - started) / len(seeds)
        started = time.perf_counter()
        batch = gen.render_many("a blue sphere", seeds)
        sync()
        batch_s = (time.perf_counter() - started) / len(seeds)
        worst = max(int(np.abs(pixels(x.data) - pixels(y.data)).max()) for x, y in zip(alone, batch, strict=True))
        check(f"batch of {args.batch} = each alone", worst <= 2, f"max pixel diff {worst} (bf16/fp16 kernels)")
        check("per-image time", True, f"alone {1000 * single_s:.1f} ms, batched {1000 * batch_s:.1f} ms "
              f"({single_s / batch_s:.2f}x)")  # fmt: skip

        fp16 = DiffusersGenerator(GeneratorSettings(**common, dtype="float16"))
        check("dtype float16", fp16.pipe.unet.dtype == torch.float16, str(fp16.pipe.unet.dtype))
        image = fp16.render_many("a green cone", [3])[0]
        check("float16 renders", pixels(image.data).shape == (args.size, args.size, 3), f"{len(image.data)} B PNG")

        diffusers_backend._pipelines.clear()
        offload = DiffusersGenerator(GeneratorSettings(**common, cpu_offload=True))
        image = offload.render_many("a yellow ring", [5])[0]
        check("cpu_offload renders", pixels(image.data).shape == (args.size, args.size, 3),
              f"unet on {offload.pipe.unet.device} between calls")  # fmt: skip
        if args.ray:
            ray_checks(GeneratorSettings(**common), check)
    width = max(len(r[0]) for r in rows)
    for name, status, detail in rows:
        print(f"{name:<{width}}  {status:<4}  {detail}")
    print("all ok" if all(r[1] == "ok" for r in rows) else "SOME CHECKS FAILED")


def ray_checks(settings: GeneratorSettings, check) -> None:
    """GPU replicas of the generator service: one per GPU, concurrent requests batched, images decode."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import torch
    from ray import serve

    from gems.interfaces import generator_service

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    gpus = torch.cuda.device_count()
    url = generator_service.start(settings, port=18499, ray_init={"log_to_driver": False})
    try:
        status = httpx.get(f"{url}/health", timeout=60).json()
        check(
            "ray: one replica per GPU", status["replicas"].get("RUNNING") == gpus, f"{status['replicas']}, {gpus} GPUs"
        )

        def one(i: int) -> httpx.Response:
            return httpx.post(f"{url}/generate", params={"prompt": f"cube {i}", "seed": i}, timeout=120)

        started = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(one, range(32)))
        wall = time.perf_counter() - started
        status = httpx.get(f"{url}/health", timeout=60).json()
        ok = all(a.status_code == 200 for a in answers)
        check("ray: 32 concurrent requests", ok and status["pipeline_calls"] < status["images"],
              f"{status['images']} images in {status['pipeline_calls']} calls, {wall:.2f}s, "
              f"largest batch {status['largest_batch']}")  # fmt: skip
    finally:
        serve.shutdown()


if __name__ == "__main__":
    main()
