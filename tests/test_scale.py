"""Scale-out without Ray: the async graph equals the sync one, a bench holds hundreds of runs on one event loop,
shards split a prompt set and `gems bench merge` joins them into the report one run would have written."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from gems.configs import ConfigError
from gems.graph import build_graph, run_config
from gems.interfaces.benchmarks.merge import MergeError, merge_runs
from gems.interfaces.benchmarks.runner import run_bench
from gems.interfaces.benchmarks.selection import parse_shard
from gems.memory.experiences import ExperienceStore, Lesson
from tests.conftest import make_settings
from tests.support.servers import OpenAIStub, ScriptedMLLM

CRITERIA = ["Is there a cat?", "Is the cat red?", "Is the cat on a mat?"]


def passes_from_round(k: int):
    return lambda q, n: "yes" if q != "Is the cat red?" or n >= k else "no"


def test_ainvoke_runs_the_same_loop_as_invoke(stubs):
    graph = build_graph(checkpointer=InMemorySaver())
    first = stubs(criteria=CRITERIA, verdict=passes_from_round(3))
    settings = first.settings()
    graph.invoke({"prompt": "a red cat on a mat"}, run_config(settings, "sync"), context=settings)
    again = stubs(criteria=CRITERIA, verdict=passes_from_round(3))  # fresh servers: the script counts attempts
    settings = again.settings()

    async def run(thread: str) -> dict:
        config = run_config(settings, thread)
        await graph.ainvoke({"prompt": "a red cat on a mat"}, config, context=settings)
        return (await graph.aget_state(config)).values

    values = asyncio.run(run("async"))
    assert values["success"] is True and [r["round"] for r in values["rounds"]] == [1, 2, 3]
    assert again.script.calls == first.script.calls and again.gen.prompts == first.gen.prompts
    assert values["mllm_calls"] == 15 and values["generator_calls"] == 3
    # A second event loop in the same process gets its own HTTP pools (no "Event loop is closed").
    assert asyncio.run(run("async-2"))["success"] is True


def _server_threads() -> int:
    return sum(1 for t in threading.enumerate() if "process_request" in t.name)


def test_bench_holds_many_runs_in_flight_on_one_event_loop(gen_server, isolated_env, tmp_path):
    """128 prompts at --concurrency 128: 64 MLLM requests are open at once, the bench adds only a few threads.

    The server holds every request at a barrier that opens only once 64 are in, so the test asserts the mechanism
    (that many runs wait on the MLLM together), not how fast a loaded machine gets there.
    """
    wanted, waiting, lock = 64, [0], threading.Lock()
    gate, timed_out = threading.Event(), []
    scripted = ScriptedMLLM(criteria=["Is it there?"], verdict=lambda q, n: "yes")

    def gated_chat(body):
        with lock:
            waiting[0] += 1
            if waiting[0] >= wanted:
                gate.set()  # this many requests are open together: from now on nobody waits
        # A generous bound: a bench that ran prompts one by one would never get here, however fast the machine.
        if not gate.wait(timeout=120):
            timed_out.append(1)
        with lock:
            waiting[0] -= 1
        return scripted(body)

    mllm = OpenAIStub(chat=gated_chat).start()
    gen = gen_server()
    own_peak = [0]
    stop = threading.Event()

    def watch() -> None:  # threads of this process that are not the stub servers' per-request threads
        while not stop.is_set():
            own_peak[0] = max(own_peak[0], threading.active_count() - _server_threads())
            time.sleep(0.02)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"object {i}" for i in range(128)))
    # Requests wait at the gate: the client's deadline must not be what opens it.
    settings = make_settings(mllm, gen, isolated_env, skills={"enabled": False})
    settings = settings.model_copy(update={"mllm": settings.mllm.model_copy(update={"timeout_s": 300})})
    watcher = threading.Thread(target=watch, daemon=True)
    before = threading.active_count() - _server_threads()
    watcher.start()
    try:
        summary = run_bench(prompts, settings, "gems", tmp_path / "out", concurrency=128, scorer="none", progress=False)
    finally:
        stop.set()
        watcher.join()
        mllm.stop()
    assert summary["finished"] == 128 and summary["errors"] == []
    assert gate.is_set() and not timed_out, f"{wanted} MLLM requests were never in flight at once"
    # One event loop, its default executor (min(32, cpus + 4) threads) and the watcher: far below one per run.
    assert own_peak[0] - before <= 40, f"{own_peak[0] - before} threads for 128 runs"
    assert len(list((tmp_path / "out" / "results").glob("*.json"))) == 128


def test_lesson_store_loses_no_write_under_concurrent_runs(stubs):
    """64 runs finishing at once, as `learn` writes (one worker thread each): every lesson is stored."""
    store = ExperienceStore(stubs().settings(memory={"lessons": True}))

    async def add_all() -> None:
        lessons = [Lesson(f"p{i}", f"lesson {i}", "success", 1, 1, 1, thread_id=f"t{i}") for i in range(64)]
        await asyncio.gather(*(asyncio.to_thread(store.add, lesson) for lesson in lessons))

    asyncio.run(add_all())
    assert store.count() == 64


def test_shard_spec_is_checked():
    assert parse_shard("2/8") == (2, 8) and parse_shard(None) is None
    for bad in ("0/4", "5/4", "2", "a/b", "-1/2"):
        with pytest.raises(ConfigError, match="--shard must be K/N"):
            parse_shard(bad)


def test_shards_cover_the_set_once_and_merge_into_one_report(stubs, tmp_path):
    s = stubs(criteria=CRITERIA, verdict=passes_from_round(2))
    settings = s.settings(loop={"seed": 11}, skills={"enabled": False})
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a red cat number {i}" for i in range(7)))
    shards = []
    for k in (1, 2, 3):
        out = tmp_path / f"shard{k}"
        summary = run_bench(prompts, settings, "gems", out, shard=(k, 3), scorer="verifier", progress=False)
        assert summary["errors"] == []
        shards.append(out)
    ids = [sorted(p.stem for p in (d / "results").glob("*.json")) for d in shards]
    assert ids == [["00000", "00003", "00006"], ["00001", "00004"], ["00002", "00005"]]

    whole = tmp_path / "whole"
    merged = merge_runs(shards, whole)
    assert merged["finished"] == merged["prompts"] == 7 and merged["scores"] is not None
    run = json.loads((whole / "run.json").read_text())
    assert run["shard"] is None and run["merged_from"] == [str(d) for d in shards]
    # Images travel with the merged folder: every path in it points inside it.
    for record in (whole / "results").glob("*.json"):
        final = json.loads(record.read_text())["final"]["image"]["path"]
        assert Path(final).is_file() and Path(final).parent == whole / "images"

    with pytest.raises(MergeError, match="shard 3/3 is missing"):
        merge_runs(shards[:2], tmp_path / "partial")
    other = tmp_path / "other"
    run_bench(prompts, s.settings(loop={"seed": 12}, skills={"enabled": False}), "gems", other, shard=(3, 3),
              scorer="verifier", progress=False)  # fmt: skip
    with pytest.raises(MergeError, match="another run"):
        merge_runs([*shards[:2], other], tmp_path / "mixed")


def test_the_multi_machine_recipe_works_as_written(stubs, tmp_path, capsys):
    """The README's recipe: shards 1..N of one command line, no --seed, then `gems bench merge`."""
    from gems.interfaces.cli import main
    from tests.support.net import write_stub_config

    s = stubs(criteria=CRITERIA, verdict=passes_from_round(2))
    cfg = write_stub_config(tmp_path / "scale.yaml", s.mllm.base_url, s.gen.url, data_dir=str(tmp_path / "data"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a red cat number {i}" for i in range(7)))

    def shard(out: str, spec: str, *more: str, file: Path = prompts) -> int:
        args = ["bench", str(file), "--config", str(cfg), "--scorer", "verifier", "--quiet"]
        return main([*args, "--out", str(tmp_path / out), "--shard", spec, *more])

    assert [shard(f"s{k}", f"{k}/3") for k in (1, 2, 3)] == [0, 0, 0]
    seeds = {json.loads((tmp_path / f"s{k}" / "run.json").read_text())["base_seed"] for k in (1, 2, 3)}
    assert len(seeds) == 1  # derived from the run, not drawn per machine
    capsys.readouterr()
    assert main(["bench", "merge", *(str(tmp_path / f"s{k}") for k in (1, 2, 3)), "--out", str(tmp_path / "all")]) == 0
    assert "3 shards merged: 7/7 prompts" in capsys.readouterr().out
    # A rerun of the same command in a new folder draws the same seed; another selection draws another.
    assert (
        shard("again", "1/3") == 0 and json.loads((tmp_path / "again" / "run.json").read_text())["base_seed"] in seeds
    )
    assert shard("first", "1/3", "--first", "6") == 0
    assert json.loads((tmp_path / "first" / "run.json").read_text())["base_seed"] not in seeds

    def merge_error(*folders: str) -> str:
        capsys.readouterr()
        assert main(["bench", "merge", *(str(tmp_path / f) for f in folders), "--out", str(tmp_path / "m")]) == 2
        return capsys.readouterr().err

    assert "selected --first 6 instead of all prompts" in merge_error("s1", "s2", "first")
    assert shard("seeded", "3/3", "--seed", "5") == 0
    err = merge_error("s1", "s2", "seeded")
    assert "config differs in loop.seed (give every shard the same --seed, or none)" in err
    edited = tmp_path / "edited.txt"
    edited.write_text(prompts.read_text() + "\na red cat number 7")
    assert shard("other-file", "3/3", file=edited) == 0
    err = merge_error("s1", "s2", "other-file")
    assert err.startswith("gems: error: ") and "it was cut from another prompt file" in err and str(edited) in err
    assert len(err.strip().splitlines()) == 1
