"""What each memory mode costs: the refiner's input after every round of a scripted 5-round trajectory.

Runs offline in a second: builds one trajectory (prompts, 512x512 images, failed criteria, thoughts, experiences),
then asks `gems.nodes.prompts.refine.refiner_parts` for the refiner's message in each mode, exactly as the refine
node would. Prints text characters, image parts and payload bytes per refine call, and each mode's total relative
to the paper's default (`experience`).

    python bench/memory_context.py [--rounds 5] [--image-side 512] [--image-window N]
"""

from __future__ import annotations

import argparse
import random
import tempfile

from PIL import Image, ImageDraw

from gems.configs import GemsSettings
from gems.memory.artifacts import ArtifactStore
from gems.memory.trajectory import MODE_LAYERS, context_size
from gems.nodes.prompts.refine import refiner_parts

CRITERIA = [
    "Is there a red bicycle?",
    "Is the bicycle leaning against a brick wall?",
    "Is there a black cat on the bicycle's seat?",
    "Is there a sign that says 'OPEN'?",
    "Is the scene at night?",
]


def scripted_state(store: ArtifactStore, rounds: int, side: int) -> dict:
    rng = random.Random(0)
    records = []
    for r in range(1, rounds + 1):
        image = Image.new("RGB", (side, side), (20 * r, 30, 60))
        draw = ImageDraw.Draw(image)
        for _ in range(200):  # some structure, so PNG sizes resemble real renders more than a flat fill
            x, y = rng.randrange(side), rng.randrange(side)
            draw.ellipse((x, y, x + side // 10, y + side // 10), fill=tuple(rng.randrange(256) for _ in range(3)))
        failed = CRITERIA[r % 3 : r % 3 + 2]
        records.append(
            {
                "round": r,
                "prompt": f"Round {r} prompt: a red bicycle leaning on a brick wall at night, a black cat on the "
                f"seat, a neon sign reading 'OPEN' above; attempt {r} stresses {', '.join(failed)}",
                "thought": " ".join(["The previous image missed the sign and the cat's position."] * 12),
                "image": store.put_image(image),
                "passed": [q for q in CRITERIA if q not in failed],
                "failed": failed,
                "experience": " ".join(["Naming the sign text in quotes and placing it above worked."] * 4),
            }
        )
    return {"prompt": "a red bicycle against a brick wall at night with a black cat on the seat and an OPEN sign",
            "rounds": records}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image-side", type=int, default=512)
    parser.add_argument("--image-window", type=int, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = ArtifactStore(tmp)
        state = scripted_state(store, args.rounds, args.image_side)
        modes = list(MODE_LAYERS)
        totals = dict.fromkeys(modes, 0)
        print(f"refiner input per refine call ({args.rounds} rounds -> {args.rounds - 1} refine calls)")
        print(f"{'after round':<12}" + "".join(f"{m:>26}" for m in modes))
        print(f"{'':<12}" + "".join(f"{'text chars / imgs / bytes':>26}" for _ in modes))
        for r in range(1, args.rounds):
            partial = {**state, "rounds": state["rounds"][:r]}
            cells = []
            for mode in modes:
                settings = GemsSettings(memory={"mode": mode, "image_window": args.image_window})
                parts = refiner_parts(partial, settings, store)
                size = context_size(parts)
                payload = sum(len(p.get("text", "")) + len(p.get("image_url", {}).get("url", "")) for p in parts)
                totals[mode] += payload
                cells.append(f"{size['text_chars']:>7} / {size['image_parts']} / {payload:>9,}")
            print(f"{r:<12}" + "".join(f"{c:>26}" for c in cells))
        base = totals["experience"]
        print("\ntotal payload bytes over the run, and ratio to 'experience' (the paper's default):")
        for mode in modes:
            print(f"  {mode:<11} {totals[mode]:>12,}  {totals[mode] / base:5.2f}x")


if __name__ == "__main__":
    main()
