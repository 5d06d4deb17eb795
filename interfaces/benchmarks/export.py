"""`gems bench export`: a run folder's final images in the layouts the benchmarks' own scripts read, unchanged.

- `geneval2`: `images/<id>.png`, `geneval2_images.json` (`{prompt: absolute image path}`) and
  `geneval2_data.jsonl`, the run's prompts' own lines of the data file in the images' order, for
  `python evaluation.py --benchmark_data DIR/geneval2_data.jsonl --image_filepath_data DIR/geneval2_images.json
  --method soft_tifa_gm --output_file scores.json` (facebookresearch/GenEval2): the script stops on the first
  prompt of its data file without an image, so a `--limit`, `--first` or `--shard` run needs its own subset.
- `geneval`: `<index:05d>/metadata.jsonl` (the prompt's metadata line) and `<index:05d>/samples/0000.png` ...
  `000{N-1}.png`, for `python evaluation/evaluate_images.py DIR --outfile results.jsonl` (djghosh13/geneval).
- `dpg`: one PNG per prompt named by its id; with N = 4 images per prompt, a 2x2 grid, for
  `compute_dpg_bench.py --image-root-path DIR --resolution R --pic-num N` (TencentQQGYLab/ELLA, dpg_bench/).

Each layout is for its own benchmark's prompts only, read from the run's prompt file (checked against the digest
in `run.json`), selected as the run selected them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from gems.configs import ConfigError
from gems.interfaces.benchmarks.datasets import BenchPrompt, load_prompts
from gems.interfaces.benchmarks.selection import Selection, prompts_digest

FORMATS = ("geneval2", "geneval", "dpg")
_BENCHMARK = {"geneval2": "GenEval2", "geneval": "GenEval", "dpg": "DPG-Bench"}


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


def _check_format(run_dir: Path, run: dict[str, Any], fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}")
    dataset = run.get("dataset")
    if dataset == fmt:
        return
    hint = f"; use --format {dataset}" if dataset in FORMATS else "; only GenEval2, GenEval and DPG-Bench runs export"
    raise ExportError(f"--format {fmt} is {_BENCHMARK[fmt]}'s layout, but {run_dir} ran {dataset} prompts{hint}")


def _run_prompts(run: dict[str, Any], prompts: str | Path | None) -> list[BenchPrompt]:
    """The prompts the run ran, in its order: its prompt file (or `prompts`, the same bytes elsewhere), selected."""
    path = Path(prompts or run["prompts"])
    if not path.exists():
        raise ExportError(f"the run's prompt file {path} is not there; pass --prompts with where it is now")
    digest = run.get("prompts_sha256")
    if digest and prompts_digest(path) != digest:
        raise ExportError(
            f"{path} is not the prompt file the run read (sha256 {digest[:12]}); pass --prompts with that file"
        )
    _, items = load_prompts(path)
    selection = Selection.recorded(run)
    return selection.shard_of(selection.choose(items)[0])


def export_run(
    run_dir: str | Path, fmt: str, to: str | Path, images_per_prompt: int = 1, prompts: str | Path | None = None
) -> int:
    """Write the run's images in `fmt`'s layout under `to`; return the number of prompts written.

    Raises:
        ExportError: an unknown format, one that is not the run's benchmark's, a missing image or sample, or a
            prompt file that is gone or changed.
    """
    run_dir, to = Path(run_dir), Path(to)
    run, records = _results(run_dir)
    _check_format(run_dir, run, fmt)
    have = int(run.get("images_per_prompt") or 1)
    if images_per_prompt > have:
        raise ExportError(
            f"{run_dir} has {have} image(s) per prompt; rerun gems bench with --images-per-prompt "
            f"{images_per_prompt} (into a new --out) to export {images_per_prompt}"
        )
    if fmt == "dpg" and images_per_prompt not in (1, 4):
        raise ExportError("DPG-Bench reads one image or a 2x2 grid of 4 per prompt: use --images-per-prompt 1 or 4")
    items = _run_prompts(run, prompts)
    missing = [item.id for item in items for k in range(images_per_prompt) if (item.id, k) not in records]
    if missing:
        raise ExportError(
            f"{len(missing)} image(s) are not finished (e.g. prompt {missing[0]}); rerun gems bench on {run_dir} first"
        )
    to.mkdir(parents=True, exist_ok=True)
    if fmt == "geneval2":
        _geneval2(items, records, to)
    elif fmt == "geneval":
        for item in items:
            folder = to / item.id
            (folder / "samples").mkdir(parents=True, exist_ok=True)
            (folder / "metadata.jsonl").write_text(json.dumps(item.meta["record"]) + "\n", encoding="utf-8")
            for k in range(images_per_prompt):
                shutil.copyfile(_image(records[(item.id, k)]), folder / "samples" / f"{k:04d}.png")
    else:
        for item in items:
            paths = [_image(records[(item.id, k)]) for k in range(images_per_prompt)]
            if images_per_prompt == 1:
                shutil.copyfile(paths[0], to / f"{item.id}.png")
            else:
                _grid(paths).save(to / f"{item.id}.png")
    return len(items)


def _geneval2(items: list[BenchPrompt], records: dict[tuple[str, int], dict[str, Any]], to: Path) -> None:
    (to / "images").mkdir(exist_ok=True)
    mapping = {}
    for item in items:
        target = to / "images" / f"{item.id}.png"
        shutil.copyfile(_image(records[(item.id, 0)]), target)
        mapping[item.prompt] = str(target.resolve())
    (to / "geneval2_images.json").write_text(json.dumps(mapping, indent=1, ensure_ascii=False), encoding="utf-8")
    (to / "geneval2_data.jsonl").write_text("".join(item.meta["line"] + "\n" for item in items), encoding="utf-8")


def _grid(paths: list[Path]) -> Any:
    """Four images tiled 2x2 in reading order, as compute_dpg_bench.py crops them."""
    from PIL import Image

    tiles = [Image.open(p).convert("RGB") for p in paths]
    width, height = tiles[0].size
    grid = Image.new("RGB", (2 * width, 2 * height))
    for k, tile in enumerate(tiles):
        grid.paste(tile.resize((width, height)), ((k % 2) * width, (k // 2) * height))
    return grid
