"""`gems bench export`: a run folder's final images in the layouts the benchmarks' own scripts read, unchanged.

- `geneval2`: `images/<id>.png` plus `geneval2_images.json`, `{prompt: absolute image path}`, for
  `python evaluation.py --benchmark_data geneval2_data.jsonl --image_filepath_data DIR/geneval2_images.json
  --method soft_tifa_gm --output_file scores.json` (facebookresearch/GenEval2).
- `geneval`: `<index:05d>/metadata.jsonl` (the prompt's metadata line) and `<index:05d>/samples/0000.png` ...
  `000{N-1}.png`, for `python evaluation/evaluate_images.py DIR --outfile results.jsonl` (djghosh13/geneval).
- `dpg`: one PNG per prompt named by its id; with N = 4 images per prompt, a 2x2 grid, for
  `compute_dpg_bench.py --image-root-path DIR --resolution R --pic-num N` (TencentQQGYLab/ELLA, dpg_bench/).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from gems.configs import ConfigError
from gems.interfaces.benchmarks.datasets import load_prompts
from gems.interfaces.benchmarks.selection import Selection

FORMATS = ("geneval2", "geneval", "dpg")


class ExportError(ConfigError):
    """The run folder cannot be exported in the asked layout; the message says why and what to run."""


def _results(run_dir: Path) -> tuple[dict[str, Any], dict[tuple[str, int], dict[str, Any]]]:
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        raise ExportError(f"{run_dir} is not a gems bench run folder (no run.json)")
    run = json.loads(run_file.read_text(encoding="utf-8"))
    records = {}
    for path in sorted((run_dir / "results").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        records[(record["id"], int(record.get("sample") or 0))] = record
    return run, records


def _image(record: dict[str, Any]) -> Path:
    image = ((record.get("final") or {}).get("image") or {}).get("path")
    if not image or not Path(image).is_file():
        raise ExportError(f"prompt {record['id']}: its final image is missing ({image}); rerun gems bench to finish it")
    return Path(image)


def _prompt_ids(run: dict[str, Any], records: dict[tuple[str, int], dict[str, Any]]) -> list[str]:
    try:
        _, items = load_prompts(run["prompts"])
    except (ConfigError, ValueError, OSError):  # the prompt file moved: export what the folder holds
        return sorted({key[0] for key in records})
    selection = Selection.recorded(run)
    return [item.id for item in selection.shard_of(selection.choose(items)[0])]


def export_run(run_dir: str | Path, fmt: str, to: str | Path, images_per_prompt: int = 1) -> int:
    """Write the run's images in `fmt`'s layout under `to`; return the number of prompts written.

    Raises:
        ExportError: an unknown format, a missing image or sample, or a dataset the layout does not fit.
    """
    run_dir, to = Path(run_dir), Path(to)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}")
    run, records = _results(run_dir)
    have = int(run.get("images_per_prompt") or 1)
    if images_per_prompt > have:
        raise ExportError(
            f"{run_dir} has {have} image(s) per prompt; rerun gems bench with --images-per-prompt "
            f"{images_per_prompt} (into a new --out) to export {images_per_prompt}"
        )
    if fmt == "geneval" and run.get("dataset") != "geneval":
        raise ExportError(
            f"the geneval layout needs GenEval's evaluation_metadata.jsonl; this run read {run['dataset']}"
        )
    if fmt == "dpg" and images_per_prompt not in (1, 4):
        raise ExportError("DPG-Bench reads one image or a 2x2 grid of 4 per prompt: use --images-per-prompt 1 or 4")
    ids = _prompt_ids(run, records)
    missing = [i for i in ids for k in range(images_per_prompt) if (i, k) not in records]
    if missing:
        raise ExportError(
            f"{len(missing)} image(s) are not finished (e.g. prompt {missing[0]}); rerun gems bench on {run_dir} first"
        )
    to.mkdir(parents=True, exist_ok=True)
    if fmt == "geneval2":
        (to / "images").mkdir(exist_ok=True)
        mapping = {}
        for i in ids:
            target = to / "images" / f"{i}.png"
            shutil.copyfile(_image(records[(i, 0)]), target)
            mapping[records[(i, 0)]["prompt"]] = str(target.resolve())
        (to / "geneval2_images.json").write_text(json.dumps(mapping, indent=1, ensure_ascii=False), encoding="utf-8")
    elif fmt == "geneval":
        _, items = load_prompts(run["prompts"])
        meta = {item.id: item.meta["record"] for item in items}
        for i in ids:
            folder = to / i
            (folder / "samples").mkdir(parents=True, exist_ok=True)
            (folder / "metadata.jsonl").write_text(json.dumps(meta[i]) + "\n", encoding="utf-8")
            for k in range(images_per_prompt):
                shutil.copyfile(_image(records[(i, k)]), folder / "samples" / f"{k:04d}.png")
    else:
        for i in ids:
            paths = [_image(records[(i, k)]) for k in range(images_per_prompt)]
            if images_per_prompt == 1:
                shutil.copyfile(paths[0], to / f"{i}.png")
            else:
                _grid(paths).save(to / f"{i}.png")
    return len(ids)


def _grid(paths: list[Path]) -> Any:
    """Four images tiled 2x2 in reading order, as compute_dpg_bench.py crops them."""
    from PIL import Image

    tiles = [Image.open(p).convert("RGB") for p in paths]
    width, height = tiles[0].size
    grid = Image.new("RGB", (2 * width, 2 * height))
    for k, tile in enumerate(tiles):
        grid.paste(tile.resize((width, height)), ((k % 2) * width, (k // 2) * height))
    return grid
