"""The in-process judge: GenEval2's Soft-TIFA with each image encoded once for all its questions, against
evaluation.py's one whole pass per question. Prints the time per image both ways and how far the numbers differ.

    python bench/local_judge.py [--images 4] [--questions 7] [--size 512] [--dtype float32] [--repeats 3]
    python bench/local_judge.py --model Qwen/Qwen3-VL-8B-Instruct --device cuda --dtype bfloat16   # real weights

Without --model it builds the tiny random-weight Qwen3-VL of the tests (2 text layers of 64, 2 vision blocks of
32), whose processor is widened to --size so an image is (size/32)^2 tokens. Its ratio says little about a real
judge: there the image's prefill is most of the work (about 1,000 image tokens against about 20 of question),
here the tiny layers leave fixed per-call costs (the processor, generate's setup) dominant. Timings are medians
of --repeats on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support (the tiny model built in code)

from PIL import Image

from gems.nodes.local_vlm import load_vlm
from tests.support.tiny_vlm import save_tiny_qwen3_vl

QUESTIONS = [
    "How many apples are in the image?", "Is there a red cube?", "Is the cube to the left of the sphere?",
    "Is the sphere blue?", "Is the cat sleeping?", "How many dogs are in the image?", "Is there a wooden table?",
    "Is the lamp turned on?", "Are the apples green?", "Is the dog behind the cat?", "Is there a window?",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or folder of a real judge (default: the tiny test model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--questions", type=int, default=7, help="GenEval2 averages about 7.5 atoms per prompt")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(save_tiny_qwen3_vl(Path(tmp) / "tiny", seed=1, max_pixels=args.size**2))
        vlm = load_vlm(model, args.dtype, args.device)
        prompts = [q + " Answer in one word." for q in (QUESTIONS * 3)[: args.questions]]
        paths = []
        for i in range(args.images):
            path = Path(tmp) / f"{i}.png"
            Image.effect_noise((args.size, args.size), 40 + 10 * i).convert("RGB").save(path)
            paths.append(str(path))
        vlm.run(lambda: vlm.next_token_distributions(paths[0], prompts[:2], False))  # warm-up

        times: dict[bool, list[float]] = {False: [], True: []}
        tokens: dict[bool, int] = {}
        for _ in range(args.repeats):
            for share in (False, True):
                started = time.perf_counter()
                for path in paths:
                    tokens[share] = vlm.run(lambda p=path, s=share: vlm.next_token_distributions(p, prompts, s))[1]
                times[share].append((time.perf_counter() - started) / len(paths))
        worst = 0.0
        for path in paths:
            exact, _ = vlm.run(lambda p=path: vlm.next_token_distributions(p, prompts, False))
            shared_dists, _ = vlm.run(lambda p=path: vlm.next_token_distributions(p, prompts, True))
            worst = max(worst, *((a - b).abs().max().item() for a, b in zip(exact, shared_dists, strict=True)))

    per_call, shared = statistics.median(times[False]), statistics.median(times[True])
    image_tokens = (args.size // 32) ** 2 if not args.model else None
    print(f"model {args.model or 'tiny Qwen3-VL (random weights)'}, {args.device}, {args.dtype}; "
          f"{args.images} images of {args.size}^2" + (f" ({image_tokens} image tokens)" if image_tokens else "")
          + f", {args.questions} questions each")  # fmt: skip
    print("| path | seconds per image | tokens read per image |")
    print("|---|---|---|")
    print(f"| one generate per question (evaluation.py) | {per_call:.4f} | {tokens[False]} |")
    print(f"| image encoded once, questions batched | {shared:.4f} | {tokens[True]} |")
    print(f"speed-up {per_call / shared:.2f}x; largest probability difference {worst:.2e}")


if __name__ == "__main__":
    main()
