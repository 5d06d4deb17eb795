"""Progress a person can follow: the diffusers pipeline loading and each denoising step, from the backend's hook
through LangGraph's custom stream to the lines `gems generate` prints, on the tiny random-weight pipeline."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
import yaml
from langgraph.checkpoint.memory import InMemorySaver

from gems.graph import build_graph, run_config
from gems.interfaces.cli.generate import Progress
from tests.conftest import make_settings
from tests.test_cli import gems


def tiny_generator(folder) -> dict[str, Any]:
    return {"backend": "diffusers", "preset": None, "model": str(folder), "width": 64, "height": 64, "steps": 2,
            "device": "cpu"}  # fmt: skip


@pytest.fixture
def fresh_pipelines(monkeypatch):
    """No pipeline loaded yet in this process, as in a new `gems generate`."""
    from gems.nodes import generators
    from gems.nodes.generators import diffusers_backend

    monkeypatch.setattr(diffusers_backend, "_pipelines", {})
    monkeypatch.setattr(generators, "_cache", {})


def test_the_backend_streams_loading_and_every_step(tiny_sd_dir, mllm_server, isolated_env, fresh_pipelines):
    mllm, _ = mllm_server(criteria=["Is there a cube?"], verdict=lambda q, n: "yes" if n >= 2 else "no")
    settings = make_settings(mllm, None, isolated_env, generator=tiny_generator(tiny_sd_dir), loop={"seed": 3})
    graph = build_graph(checkpointer=InMemorySaver())
    seen: list[tuple[Any, ...]] = []

    async def run() -> None:
        async for _, mode, chunk in graph.astream(
            {"prompt": "a red cube"}, run_config(settings, "p1"), context=settings,
            stream_mode=["updates", "custom"], subgraphs=True,
        ):  # fmt: skip
            if mode == "custom" and chunk.get("event") == "generator":
                seen.append((chunk["stage"], chunk.get("step"), chunk.get("steps"), chunk["model"]))
            elif mode == "updates" and "generate" in chunk:
                seen.append(("generated", chunk["generate"]["round"]))

    asyncio.run(run())
    model = str(tiny_sd_dir)
    assert seen == [
        ("loading", None, None, model), ("loaded", None, None, model),
        ("step", 1, 2, model), ("step", 2, 2, model), ("generated", 1),
        ("step", 1, 2, model), ("step", 2, 2, model), ("generated", 2),  # loaded once, for the whole process
    ]  # fmt: skip


def test_outside_a_run_there_is_no_stream_and_the_pipeline_renders_as_before(tiny_sd_dir, fresh_pipelines):
    from gems.configs import GeneratorSettings
    from gems.nodes.generators import get_generator
    from gems.nodes.generators.diffusers_backend import progress_writer
    from tests.support.aio import one_image

    assert progress_writer() is None  # a service or a script: nobody streams the run
    generator = get_generator(GeneratorSettings(**tiny_generator(tiny_sd_dir)))
    assert one_image(generator.render("a red cube", [1])).meta["steps"] == 2


@pytest.mark.slow
def test_gems_generate_prints_loading_and_steps_unless_quiet(tiny_sd_dir, mllm_server, tmp_path, capsys,
                                                             fresh_pipelines):  # fmt: skip
    from gems.interfaces.cli import main as gems_main

    mllm, _ = mllm_server(criteria=["Is there a cube?"], verdict=lambda q, n: "yes" if n >= 2 else "no")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "mllm": {"base_url": mllm.base_url, "model": "stub-vlm", "api_key": "sk-test", "max_retries": 0},
        "generator": tiny_generator(tiny_sd_dir), "memory": {"lessons": False}, "skills": {"top_k": 20},
    }))  # fmt: skip
    done = gems("generate", "a red cube", "--config", str(cfg), "--out", str(tmp_path / "o"), "--seed", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    expected = [
        f"check      generator {tiny_sd_dir}: a local diffusers folder",
        f"generate   loading {tiny_sd_dir} on cpu ...",
        f"generate   loaded {tiny_sd_dir} in ",
        "generate   round 1: step 1/2",
        "generate   round 1: step 2/2",
        "generate   round 1: image 64x64 seed 3",
        "generate   round 2: step 1/2",
        "generate   round 2: step 2/2",
        "generate   round 2: image 64x64 seed 4",
    ]
    where = [next(i for i, line in enumerate(lines) if line.startswith(text)) for text in expected]
    assert where == sorted(where), done.stderr  # each in its place, in this order
    assert sum("loading" in line for line in lines) == 1

    # --quiet, in this process (torch is loaded already): the pipeline loads and steps, and nothing is printed.
    capsys.readouterr()
    assert gems_main(["generate", "a red cube", "--config", str(cfg), "--out", str(tmp_path / "q"), "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.out.strip() == str(tmp_path / "q" / "final.png") and quiet.err == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def step(n: int, steps: int, task: str = "generate") -> dict[str, Any]:
    return {"event": "generator", "stage": "step", "task": task, "model": "m", "step": n, "steps": steps}


def test_on_a_terminal_steps_rewrite_one_line():
    screen = Terminal()
    progress = Progress(screen, round_no=2)
    progress.custom(step(1, 2, "edit"))
    progress.custom(step(2, 2, "edit"))
    progress.custom({"event": "image", "round": 3})  # a node's own event: not the generator's, not shown
    progress.update("generate", {"round": 3, "candidates": [], "timings": {}})
    assert screen.getvalue() == (
        "edit       round 3: step 1/2\r\x1b[Kedit       round 3: step 2/2\r\x1b[Kgenerate   round 3: images  (0.0s)\n"
    )
    progress.custom(step(1, 9))
    progress.end_line()  # Ctrl-C or an error: what follows starts a line of its own
    assert screen.getvalue().endswith("generate   round 4: step 1/9\n")


def test_in_a_log_a_step_line_is_printed_per_quarter():
    log = io.StringIO()
    progress = Progress(log)
    for n in range(1, 10):
        progress.custom(step(n, 9))
    assert log.getvalue().splitlines() == [f"generate   round 1: step {n}/9" for n in (1, 3, 5, 7, 9)]
    log = io.StringIO()
    progress = Progress(log)
    for _ in range(2):  # two candidates, a call each (a pipeline that cannot batch): each call counts from 1
        for n in (1, 2):
            progress.custom(step(n, 2))
    assert log.getvalue().splitlines() == [f"generate   round 1: step {n}/2" for n in (1, 2, 1, 2)]
    quiet = Progress(None)
    quiet.custom(step(1, 9))
    quiet.say("anything")  # --quiet: nothing, and no error
