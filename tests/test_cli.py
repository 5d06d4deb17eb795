"""`gems generate` as users run it: a real subprocess, real SQLite checkpoints, local servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from PIL import Image

from tests.support.net import free_port, write_stub_config

CRITERIA = ["Is there a cat?", "Is the cat red?", "Is the cat on a mat?"]
pytestmark = pytest.mark.slow


def write_config(path: Path, mllm_url: str, gen_url: str, lessons: bool = False) -> Path:
    return write_stub_config(path, mllm_url, gen_url, memory={"lessons": lessons})


def gems(
    *args: str, env_extra: dict | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    command = [sys.executable, "-m", "gems.interfaces.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("gems: error:")]


def test_generate_writes_final_image_and_trajectory(mllm_server, gen_server, tmp_path, isolated_env):
    mllm, _ = mllm_server(criteria=CRITERIA, verdict=lambda q, n: "yes" if q != "Is the cat red?" or n >= 2 else "no")
    gen = gen_server()
    cfg = write_config(tmp_path / "c.yaml", mllm.base_url, gen.url)
    out = tmp_path / "out"
    result = gems("generate", "a red cat on a mat", "--config", str(cfg), "--out", str(out), "--seed", "7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out / "final.png")
    for marker in (
        "plan       skill candidates: ",
        "prepare    no skill; the first prompt is the request as written",
        "decompose  3 criteria",
        "generate   round 1",
        "verify     yes",
        "critique   round 1: 2/3",
        "compress   round 1 experience: Lesson: make the failed parts explicit.",
        "refine     next prompt: refined prompt 1",
        "finalize   success: round 2 (3/3 passed)",
    ):
        assert marker in result.stderr
    assert "review" not in result.stderr and "done" not in result.stderr  # steps that did nothing stay quiet
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert trajectory["success"] is True and trajectory["criteria"] == CRITERIA
    assert [r["failed"] for r in trajectory["rounds"]] == [["Is the cat red?"], []]
    assert trajectory["rounds"][0]["experience"] and trajectory["rounds"][1]["prompt"] == "refined prompt 1"
    assert trajectory["counts"] == {
        "mllm_calls": 10, "generator_calls": 2, "rounds": 2,
        "calls_made": {"mllm_calls": 10, "generator_calls": 2},  # nothing redone: the journal agrees with state
    }  # fmt: skip
    assert trajectory["timings"]["wall_s"] > 0 and "generate" in trajectory["timings"]
    assert Image.open(out / "final.png").size == (32, 32)
    assert trajectory["final"]["image"]["sha256"] == trajectory["rounds"][1]["image"]["sha256"]
    # Artifacts and checkpoints went to GEMS_DATA_DIR.
    assert (isolated_env / "checkpoints.sqlite").exists()
    assert len(list((isolated_env / "artifacts").glob("*.png"))) == 2


def test_resume_after_kill_redoes_no_completed_round(mllm_server, gen_server, tmp_path, isolated_env):
    from gems.configs import GemsSettings
    from gems.memory.experiences import ExperienceStore

    mllm, script = mllm_server(
        criteria=CRITERIA, verdict=lambda q, n: "yes" if q != "Is the cat red?" or n >= 3 else "no"
    )
    gen = gen_server(block_on_call=2)
    cfg = write_config(tmp_path / "c.yaml", mllm.base_url, gen.url, lessons=True)
    store = ExperienceStore(GemsSettings(data_dir=isolated_env))
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "gems.interfaces.cli",
        "generate",
        "a red cat",
        "--config",
        str(cfg),
        "--thread-id",
        "k1",
    ]
    proc = subprocess.Popen([*args, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        assert gen.blocked.wait(90), "the run never reached round 2"
        proc.kill()  # SIGKILL: no cleanup, like a crashed machine
    finally:
        proc.wait(30)
    before = dict(script.calls)
    assert before == {"route": 1, "decompose": 1, "verify": 3, "compress": 1, "refine": 1}
    assert store.count() == 0  # a killed run leaves no partial lesson
    gen.block_on_call = None
    gen.release.set()

    result = gems("generate", "--resume", "k1", "--config", str(cfg), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "resuming thread k1" in result.stderr
    # Round 1 was rendered once; round 2 was interrupted and rendered again; planning was not redone.
    assert gen.prompts == ["a red cat", "refined prompt 1", "refined prompt 1", "refined prompt 2"]
    assert script.calls["route"] == 1 and script.calls["decompose"] == 1
    assert script.calls["verify"] == 9
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert trajectory["success"] is True and len(trajectory["rounds"]) == 3
    # State counts finished work (3 generations); the journal counts the interrupted one too.
    assert trajectory["counts"]["generator_calls"] == 3
    assert trajectory["counts"]["calls_made"] == {"mllm_calls": 15, "generator_calls": 4}
    assert store.count() == 1 and store.list()[0].id == trajectory["lesson_id"]
    # Resuming a finished thread just rewrites the outputs.
    again = gems("generate", "--resume", "k1", "--config", str(cfg), "--out", str(tmp_path / "out2"))
    assert again.returncode == 0 and (tmp_path / "out2" / "final.png").exists()
    assert len(gen.prompts) == 4 and store.count() == 1


def test_resume_runs_as_started_and_never_twice_at_once(mllm_server, gen_server, tmp_path, isolated_env):
    mllm, _ = mllm_server(criteria=CRITERIA, verdict=lambda q, n: "no")  # never passes: the round budget decides
    gen = gen_server(block_on_call=2)
    cfg = write_config(tmp_path / "c.yaml", mllm.base_url, gen.url)
    args = [sys.executable, "-m", "gems.interfaces.cli", "generate", "a red cat", "--config", str(cfg),
            "--thread-id", "k2", "--max-rounds", "2", "--seed", "7", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        assert gen.blocked.wait(90), "the run never reached round 2"
        # The same thread from a second process while the first runs: refused, not generated twice.
        twice = gems("generate", "--resume", "k2", "--config", str(cfg))
        assert twice.returncode == 2 and "being run by another process" in twice.stderr
        proc.kill()
    finally:
        proc.wait(30)
    gen.block_on_call = None
    gen.release.set()
    # Resumed without --max-rounds or --seed: the run keeps 2 rounds and seeds 7, 8 as it started.
    result = gems("generate", "--resume", "k2", "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    trajectory = json.loads((tmp_path / "o" / "trajectory.json").read_text())
    assert len(trajectory["rounds"]) == 2 and gen.seeds == ["7", "8", "8"]
    assert "started with other models" not in result.stderr
    # The same thread resumed with another model: it says so (endpoints and keys may change silently).
    other = write_config(tmp_path / "other.yaml", mllm.base_url, gen.url)
    other.write_text(other.read_text().replace("stub-vlm", "another-vlm"))
    again = gems("generate", "--resume", "k2", "--config", str(other), "--out", str(tmp_path / "o2"))
    assert again.returncode == 0 and "was started with other models or loop settings" in again.stderr


def test_existing_thread_needs_resume(mllm_server, gen_server, tmp_path):
    mllm, _ = mllm_server(criteria=[])
    gen = gen_server()
    cfg = write_config(tmp_path / "c.yaml", mllm.base_url, gen.url)
    assert gems("generate", "a cat", "--config", str(cfg), "--thread-id", "t", "--quiet").returncode == 0
    result = gems("generate", "a cat", "--config", str(cfg), "--thread-id", "t")
    assert result.returncode == 2
    assert error_lines(result.stderr) == ["gems: error: thread t already exists; continue it with --resume t"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("loop:\n  max_roundz: 3\n", "unknown key 'loop.max_roundz'"),
        ("loop:\n  max_rounds: many\n", "loop.max_rounds: Input should be a valid integer"),
        ("mllm: [unclosed\n", "broken YAML in config"),
        ("- just\n- a list\n", "the top level must be a mapping"),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(tmp_path, content, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    result = gems("generate", "a cat", "--config", str(cfg))
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and expected in lines[0] and str(cfg) in lines[0]


def test_missing_config_and_empty_prompt(tmp_path):
    missing = gems("generate", "a cat", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert error_lines(missing.stderr) == [
        f"gems: error: config file not found: {tmp_path / 'nope.yaml'} (give a path to a YAML file or one of: "
        "default, openai, cpu, local)"
    ]
    empty = gems("generate", "   ")
    assert empty.returncode == 2 and "the prompt is empty" in error_lines(empty.stderr)[0]


def test_unreachable_mllm_endpoint(gen_server, tmp_path):
    gen = gen_server()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    cfg = write_config(tmp_path / "c.yaml", dead, gen.url)
    started = time.monotonic()
    result = gems("generate", "a cat", "--config", str(cfg), "--thread-id", "u1")
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"cannot reach the MLLM endpoint {dead}" in lines[0]
    assert "GEMS_MLLM_BASE_URL" in lines[0]
    # Checked before the run: nothing was rendered or saved, so there is nothing to resume.
    assert gen.prompts == [] and "--resume" not in result.stderr
    assert time.monotonic() - started < 60


def test_generator_error_exits_with_one_line_and_resume_hint(mllm_server, gen_server, tmp_path):
    mllm, _ = mllm_server(criteria=CRITERIA)
    gen = gen_server(fail_first=5)
    cfg = write_config(tmp_path / "c.yaml", mllm.base_url, gen.url)
    result = gems("generate", "a cat", "--config", str(cfg), "--thread-id", "g1")
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert lines == [f"gems: error: generator server {gen.url} answered HTTP 500: model exploded"]
    assert "During task" not in result.stderr  # LangGraph's note on errors inside a node is internal
    assert f"gems: progress is saved; continue with: gems generate --resume g1 --config {cfg}" in result.stderr
    # The fix is in place: resume finishes without re-planning.
    gen.fail_first = 0
    resumed = gems("generate", "--resume", "g1", "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert resumed.returncode == 0, resumed.stderr


def test_env_overrides_reach_the_run(mllm_server, gen_server, tmp_path):
    mllm, _ = mllm_server(criteria=[])
    gen = gen_server()
    cfg = write_config(tmp_path / "c.yaml", "http://127.0.0.1:9/v1", "http://127.0.0.1:9/x")
    env = {"GEMS_MLLM_BASE_URL": mllm.base_url, "GEMS_GENERATOR_URL": gen.url, "GEMS_MLLM_MODEL": "env-model"}
    result = gems("generate", "a cat", "--config", str(cfg), "--out", str(tmp_path / "o"), env_extra=env)
    assert result.returncode == 0, result.stderr
    assert gen.prompts == ["a cat"]
    assert mllm.requests[0]["body"]["model"] == "env-model"


def test_debug_shows_traceback(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("loop:\n  max_roundz: 3\n")
    result = gems("generate", "a cat", "--config", str(cfg), "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_no_command_prints_the_help_and_exits_2(capsys):
    from gems.interfaces.cli import main

    assert main([]) == 2
    out = capsys.readouterr()
    assert "Commands:" in out.out and "generate" in out.out and "gems: error" not in out.err
    assert main(["bench"]) == 2 and "gems bench export RUN_DIR" in capsys.readouterr().out
    assert main(["bogus"]) == 2 and "gems: error: No such command 'bogus'" in capsys.readouterr().err


def test_scale_out_commands_spell_their_flags_as_documented(capsys):
    from gems.interfaces.cli import main

    assert main(["--help"]) == 0 and "serve-generator" in capsys.readouterr().out
    assert main(["serve-generator", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--config", "--replicas", "--max-batch-size", "--batch-wait-ms", "--host", "--port", "--address"):
        assert flag in text
    assert main(["bench", "run", "--help"]) == 0 and "--shard" in capsys.readouterr().out
    assert main(["bench", "merge", "--help"]) == 0 and "SHARD_DIRS..." in capsys.readouterr().out
    assert main(["bench", "x.txt", "--out", "o", "--shard", "3/2"]) == 2
    assert "--shard must be K/N" in capsys.readouterr().err


@click.command()
@click.argument("kind")
def failing_command(kind: str) -> None:
    """Fails as a graph task does: LangGraph notes the task's name and id; gems notes how to resume."""
    from gems.configs import GemsError

    words = " ".join(f"word{i:03d}" for i in range(120))  # 959 characters
    exc = GemsError(f"a known problem: {words}") if kind == "known" else RuntimeError(f"unexpected: {words}")
    exc.add_note("During task with name 'decompose' and id '9f0c2a3e-51d7-4d57-ae4e-2c1f5e0d8b1a'")
    exc.add_note("progress is saved; continue with: gems generate --resume t1")
    raise exc


def test_error_lines_are_whole_words_without_langgraph_task_notes(monkeypatch, capsys):
    from gems.interfaces.cli import COMMANDS, main

    monkeypatch.setitem(COMMANDS, "fail", ("tests.test_cli", "failing_command", "fails"))
    assert main(["fail", "known"]) == 1
    err = capsys.readouterr().err
    assert "During task" not in err
    (line,) = error_lines(err)
    assert line.endswith("word118 word119")  # a known error's message is shown whole
    assert "gems: progress is saved; continue with: gems generate --resume t1" in err

    assert main(["fail", "other"]) == 1
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert "During task" not in err and line.startswith("gems: error: RuntimeError: unexpected: word000 ")
    assert len(line) < 340 and line.endswith("…")
    assert all(len(word) == 7 for word in line.removesuffix("…").split()[4:])  # cut between words, never in one


def test_short_cuts_between_words():
    from gems.interfaces.cli import short

    assert short("alpha beta gamma delta", 14) == "alpha beta…"
    assert short("alpha beta", 14) == "alpha beta"
    assert short("x" * 30, 10) == "x" * 9 + "…"  # one long word: nowhere else to cut


def test_the_resume_command_repeats_what_the_run_needs_to_go_on_as_started(tmp_path, monkeypatch):
    from gems.interfaces.cli.generate import resume_command

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my cfg.yaml").write_text("{}")
    assert (
        resume_command("t1", (), Path("gems-out/t1"), None) == f"gems generate --resume t1 --out {tmp_path}/gems-out/t1"
    )
    # Files and the output folder absolute (the hint works from any folder); a preset stays a name.
    assert resume_command("t1", ("my cfg.yaml", "ablations/edit"), Path("runs/a b"), "edit") == (
        f"gems generate --resume t1 --config '{tmp_path}/my cfg.yaml' --config ablations/edit "
        f"--out '{tmp_path}/runs/a b' --refine-mode edit"
    )


def run_hint(stderr: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the command the resume hint names, as a person would paste it."""
    (line,) = [line for line in stderr.splitlines() if "progress is saved; continue with: " in line]
    words = shlex.split(line.split("continue with: ", 1)[1])
    assert words[:2] == ["gems", "generate"]
    return gems(*words[1:], cwd=cwd)


def test_after_an_error_the_hint_continues_the_run_as_started(mllm_server, gen_server, tmp_path):
    from tests.support.servers import OpenAIStub, edited_png

    mllm, _ = mllm_server(criteria=CRITERIA, verdict=lambda q, n: "yes" if q != "Is the cat red?" or n >= 2 else "no")
    gen = gen_server(fail_first=1)
    editor = OpenAIStub(edits=edited_png).start()
    try:
        edits = {"backend": "openai", "url": editor.base_url, "model": "e", "max_retries": 0}
        cfg = write_stub_config(tmp_path / "my cfg.yaml", mllm.base_url, gen.url, editor=edits)
        out = tmp_path / "out dir"
        # Started with relative paths; the hint is pasted in another folder.
        failed = gems("generate", "a red cat", "--config", "my cfg.yaml", "--out", "out dir", "--refine-mode", "edit",
                      "--thread-id", "h1", cwd=tmp_path)  # fmt: skip
        assert failed.returncode == 1 and not out.exists()
        assert f"--resume h1 --config '{cfg}' --out '{out}' --refine-mode edit" in failed.stderr
        gen.fail_first = 0
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        resumed = run_hint(failed.stderr, cwd=elsewhere)
        assert resumed.returncode == 0, resumed.stderr
        assert "started with other models or loop settings" not in resumed.stderr  # the same settings as before
        trajectory = json.loads((out / "trajectory.json").read_text())
        assert [r["mode"] for r in trajectory["rounds"]] == ["generate", "edit"] and trajectory["success"] is True
    finally:
        editor.stop()


def test_ctrl_c_prints_the_hint_even_when_quiet_and_the_hint_finishes_the_run(mllm_server, gen_server, tmp_path):
    server, script = mllm_server(criteria=["Is there a cat?"], block_at=("verify", 1))
    cfg = write_config(tmp_path / "c.yaml", server.base_url, gen_server().url)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "gems.interfaces.cli", "generate", "a red cat", "--config", str(cfg),
            "--out", str(out), "--thread-id", "c1", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert script.blocked.wait(90), "the verifier call never arrived"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        script.release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert stderr.splitlines() == [
        f"gems: progress is saved; continue with: gems generate --resume c1 --config {cfg} --out {out}"
    ]
    resumed = run_hint(stderr)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == str(out / "final.png") and (out / "final.png").is_file()


def test_progress_lines_name_what_they_show():
    from gems.interfaces.cli.generate import describe_update

    assert describe_update("compress", {"rounds": [{"round": 1, "experience": "no"}]}) == [
        "compress   round 1 experience: no"
    ]
    assert describe_update("compress", {"rounds": [{"round": 2, "experience": ""}]}) == [
        "compress   round 2 experience: (empty)"
    ]
    assert describe_update("refine", {"current_prompt": "no", "action": {"mode": "generate"}}) == [
        "refine     next prompt: no"
    ]
    merged = {"current_prompt": "a red cat", "rounds": [{"round": 1, "experience": "say red twice"}]}
    assert describe_update("refine", merged) == [  # loop.compress merged: one call writes both
        "refine     round 1 experience: say red twice",
        "refine     next prompt: a red cat",
    ]
    edit = {"current_prompt": "make the cat red", "action": {"mode": "edit", "base_round": 1, "reason": "local fix"}}
    assert describe_update("refine", edit) == ["refine     edit round 1's image: make the cat red (why: local fix)"]
    follow_up = {"turns": [{"request": "a red cube"}], "prompt": "a blue cube on a table", "references": [],
                 "action": {"mode": "edit", "round": 1}, "current_prompt": "now make it blue"}  # fmt: skip
    assert describe_update("intake", follow_up) == [
        'intake     follow-up to "a red cube", as a whole request: a blue cube on a table',
        "intake     round 1 edits the earlier answer's image: now make it blue",
    ]
    assert describe_update("intake", {"prompt": "a cat"}) == []  # a first request: the thread line says it
    edited = {"round": 2, "candidates": [{"width": 8, "height": 8, "seed": 5, "sha256": "ab" * 32, "edit": True}]}
    assert describe_update("generate", edited)[0].startswith("edit       round 2: edited image 8x8 seed 5")


def test_the_console_script_ends_fast_but_keeps_what_a_normal_exit_does():
    """`run` skips only the interpreter's teardown: a running thread is waited for, atexit handlers run, buffered
    output reaches the pipe and the exit code is main()'s."""
    script = (
        "import atexit, threading, time\n"
        "import gems.interfaces.cli as cli\n"
        "def main():\n"
        "    threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "    print('buffered', end='')\n"
        "    return 3\n"
        "cli.main = main\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "cli.run()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as most shells run it
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 3, result.stderr
    assert result.stdout.split() == ["bufferedthread", "done", "atexit", "ran"]
