"""Helpers for tests that start servers or CLI subprocesses: free ports, readiness waits, stub configs."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> httpx.Response:
    """Poll `url` until it answers 200; fail early if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(url, timeout=1)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with code {proc.returncode} before {url} answered")
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {timeout:.0f}s")
        time.sleep(0.2)


def stub_config(mllm_url: str, gen_url: str | None, **sections: Any) -> dict[str, Any]:
    """A config for the local stub servers: no lessons, every bundled skill offered (no embedding model needed)."""
    config: dict[str, Any] = {
        "mllm": {"base_url": mllm_url, "model": "stub-vlm", "api_key": "sk-test", "max_retries": 0, "timeout_s": 20},
        "generator": {"backend": "http", "preset": None, "url": gen_url, "max_retries": 0},
        "memory": {"lessons": False},
        "skills": {"top_k": 20},
    }
    for key, value in sections.items():
        config[key] = (
            {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
        )
    return config


def write_stub_config(path: Path, mllm_url: str, gen_url: str | None, **sections: Any) -> Path:
    path.write_text(yaml.safe_dump(stub_config(mllm_url, gen_url, **sections)))
    return path
