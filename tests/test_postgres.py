"""Postgres for shared deployments: a real PostgreSQL server (Debian package) on 127.0.0.1, run/kill/resume."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.net import free_port, write_stub_config

CRITERIA = ["Is there a cat?", "Is the cat red?"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres_dsn():
    """A throwaway cluster started with the server binaries (apt-get install postgresql; .ci/run does)."""
    if os.environ.get("GEMS_TEST_POSTGRES_DSN"):
        yield os.environ["GEMS_TEST_POSTGRES_DSN"]
        return
    pytest.importorskip("langgraph.checkpoint.postgres")
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        message = "no PostgreSQL server binaries (apt-get install postgresql) and no GEMS_TEST_POSTGRES_DSN"
        if os.environ.get("GEMS_REQUIRE_POSTGRES"):  # CI installs them: a skip there would hide a broken setup
            pytest.fail(message)
        pytest.skip(message)
    bindir = Path(bins[-1]).parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="gems-pg-"))
    if as_user:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres")
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {data}"
    run(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-o", options, "-l", str(data / "log"), "-w", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"], check=False)
        shutil.rmtree(data, ignore_errors=True)


def test_postgres_run_kill_and_resume_from_another_process(postgres_dsn, mllm_server, gen_server, tmp_path):
    mllm, script = mllm_server(
        criteria=CRITERIA, verdict=lambda q, n: "yes" if q != "Is the cat red?" or n >= 3 else "no"
    )
    gen = gen_server(block_on_call=2)
    cfg = write_stub_config(
        tmp_path / "c.yaml", mllm.base_url, gen.url, storage={"checkpointer": "postgres", "postgres_dsn": postgres_dsn}
    )
    cli = [sys.executable, "-m", "gems.interfaces.cli", "generate"]
    proc = subprocess.Popen([*cli, "a red cat", "--config", str(cfg), "--thread-id", "pg1"], stderr=subprocess.PIPE)
    try:
        assert gen.blocked.wait(90), "the run never reached round 2"
        proc.kill()
    finally:
        proc.wait(30)
    gen.block_on_call = None
    gen.release.set()

    out = tmp_path / "out"
    result = subprocess.run(
        [*cli, "--resume", "pg1", "--config", str(cfg), "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert gen.prompts == ["a red cat", "refined prompt 1", "refined prompt 1", "refined prompt 2"]
    assert script.calls["decompose"] == 1
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert trajectory["success"] is True and len(trajectory["rounds"]) == 3

    import psycopg

    with psycopg.connect(postgres_dsn) as conn:
        threads = conn.execute("SELECT DISTINCT thread_id FROM checkpoints").fetchall()
    assert ("pg1",) in threads
    assert not (tmp_path / "data" / "checkpoints.sqlite").exists()


def test_postgres_dsn_is_required(tmp_path):
    from gems.configs import ConfigError, GemsSettings
    from gems.memory.checkpoint import open_checkpointer

    settings = GemsSettings(data_dir=tmp_path, storage={"checkpointer": "postgres"})
    with pytest.raises(ConfigError, match=r"storage\.postgres_dsn is not set"), open_checkpointer(settings):
        pass
