"""`gems bench merge SHARD_DIR... --out DIR`: join the folders of `gems bench --shard K/N` into one run folder.

The shards must be one run cut N ways: same prompt file (by digest), selection, dataset, method, scorer, config
digest and base seed, and every K from 1 to N present once. The merged folder holds every result, the images they
reference (copied in, so the folder travels and `gems bench export` works on it), a `run.json` naming its shards,
and the reports one unsharded run would have written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from gems.configs import ConfigError
from gems.interfaces.benchmarks.report import build_summary, write_reports
from gems.interfaces.benchmarks.runner import config_differences, prompt_file_change
from gems.interfaces.benchmarks.selection import Selection, prompts_digest

# What must agree for shards to be parts of one run (paths, times and models' labels may differ per machine).
_SAME = ("dataset", "method", "scorer", "images_per_prompt", "search_n", "base_seed")


class MergeError(ConfigError):
    """The folders are not the shards of one run, or the output folder holds something else."""


def _run_info(folder: Path) -> dict[str, Any]:
    path = folder / "run.json"
    if not path.is_file():
        raise MergeError(f"{folder} is not a gems bench run folder (no run.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def _check_shards(folders: list[Path], runs: list[dict[str, Any]]) -> int:
    """The shard count N, after checking the folders are shards 1..N of one run."""
    first = runs[0]
    for folder, run in zip(folders, runs, strict=True):
        if not run.get("shard"):
            raise MergeError(f"{folder} is not a shard (run without --shard); nothing to merge")
        other = f"{folder} is a shard of another run than {folders[0]}"
        if run.get("prompts_sha256") != first.get("prompts_sha256"):
            raise MergeError(f"{other}: it was cut from {prompt_file_change(first, run)}")
        if Selection.recorded(run).spec() != Selection.recorded(first).spec():
            selections = (Selection.recorded(r).flags(shard=False) for r in (run, first))
            raise MergeError(f"{other}: it selected {' instead of '.join(selections)}")
        if run.get("config_digest") != first.get("config_digest"):
            what = config_differences(first, run)
            seed = " (give every shard the same --seed, or none)" if "loop.seed" in what else ""
            raise MergeError(f"{other}: its config differs in {what}{seed}")
        for key in _SAME:
            if run.get(key) != first.get(key):
                raise MergeError(f"{other} ({key} differs)")
    specs = [tuple(int(x) for x in str(run["shard"]).split("/")) for run in runs]
    n = specs[0][1]
    if any(spec[1] != n for spec in specs):
        raise MergeError(f"the folders were cut different ways: {', '.join(str(r['shard']) for r in runs)}")
    seen = [spec[0] for spec in specs]
    for k in range(1, n + 1):
        if seen.count(k) != 1:
            state = "is missing" if k not in seen else "appears twice"
            raise MergeError(f"shard {k}/{n} {state}; give each of the N shard folders once")
    return n


def _prompt_file(runs: list[dict[str, Any]]) -> str | None:
    """The prompt file as this machine sees it: the first shard's recorded path (absolute) that holds the run's
    bytes here, else the first shard's, for `gems bench export` to read or to name when it has moved."""
    for run in runs:
        path = Path(str(run.get("prompts") or ""))
        if run.get("prompts") and path.exists() and prompts_digest(path) == run.get("prompts_sha256"):
            return str(path.resolve())
    return runs[0].get("prompts")


def _relocate(value: Any, shard: Path, images: Path) -> Any:
    """Copy every referenced image into `images` and point the reference there."""
    if isinstance(value, list):
        return [_relocate(v, shard, images) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _relocate(v, shard, images) for k, v in value.items()}
    sha, path = out.get("sha256"), out.get("path")
    if isinstance(sha, str) and isinstance(path, str):
        target = images / f"{sha}.png"
        # The shard's own path when this machine sees it, else the copy its report keeps in <shard>/images.
        source = next((p for p in (Path(path), shard / "images" / f"{sha}.png") if p.is_file()), None)
        if source is not None and not target.exists():
            shutil.copyfile(source, target)
        if target.exists():
            out["path"] = str(target.resolve())
    return out


def merge_runs(folders: list[str | Path], out: str | Path) -> dict[str, Any]:
    """Merge shard folders into `out` and write its reports; returns the summary.

    Raises:
        MergeError: a folder is not a shard of the same run, a shard is missing or doubled, or `out` holds a run
            that is not a merge.
    """
    shard_dirs = [Path(f) for f in folders]
    if not shard_dirs:
        raise MergeError("give the shard folders to merge")
    out = Path(out)
    runs = [_run_info(folder) for folder in shard_dirs]
    n = _check_shards(shard_dirs, runs)
    if (out / "run.json").is_file() and "merged_from" not in _run_info(out):
        raise MergeError(f"{out} holds a bench run, not a merge; choose another --out")
    for name in ("results", "images"):  # a merge is rebuilt whole from its shards each time
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "results").mkdir(parents=True)
    (out / "images").mkdir()

    records, errors = [], []
    for folder in shard_dirs:
        names = set()
        for path in sorted((folder / "results").glob("*.json")):
            if (out / "results" / path.name).exists():
                raise MergeError(f"{path.name} is in more than one shard; were the shards run with the same --shard?")
            record = _relocate(json.loads(path.read_text(encoding="utf-8")), folder, out / "images")
            (out / "results" / path.name).write_text(json.dumps(record, indent=1, ensure_ascii=False), "utf-8")
            records.append(record)
            names.add(path.stem)
        summary_file = folder / "summary.json"
        if summary_file.is_file():  # failures of prompts the shard has not finished since
            shard_errors = json.loads(summary_file.read_text(encoding="utf-8")).get("errors") or []
            errors += [e for e in shard_errors if e.split(":", 1)[0] not in names]

    first = runs[0]
    by_shard = {
        str(run["shard"]): {"folder": str(folder), **{k: run.get(k) for k in ("started_at", "finished_at", "wall_s")}}
        for folder, run in zip(shard_dirs, runs, strict=True)
    }
    run_info = {
        **first,
        "prompts": _prompt_file(runs),
        "shard": None,
        "merged_from": [str(folder) for folder in shard_dirs],
        "shards": dict(sorted(by_shard.items(), key=lambda kv: int(kv[0].split("/")[0]))),
        "started_at": min((run.get("started_at") or "") for run in runs) or None,
        "finished_at": max((run.get("finished_at") or "") for run in runs) or None,
        # Shards run side by side: the run took as long as its slowest shard.
        "wall_s": max(float(run.get("wall_s") or 0.0) for run in runs),
        "resumed_at": [],
    }
    (out / "run.json").write_text(json.dumps(run_info, indent=1, ensure_ascii=False), encoding="utf-8")
    records.sort(key=lambda r: (str(r.get("id")), int(r.get("sample") or 0)))
    prompts = int((first.get("selection") or {}).get("k") or len({r.get("id") for r in records}))
    summary = build_summary(records, run=run_info, prompts=prompts, errors=errors)
    summary["shards"] = n
    write_reports(out, summary, records)
    return summary
