"""Shared fixtures: an isolated environment, local servers on 127.0.0.1, a tiny diffusers model folder."""

from __future__ import annotations

import os
import signal

# A suite started in the background by a script (`cmd &`) inherits SIGINT ignored, and so would every CLI it starts
# (an ignored signal survives exec), which the Ctrl-C tests need at its default. A handler, unlike an ignore, is
# reset by exec: the CLIs start with Python's own KeyboardInterrupt.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# No hub, no telemetry, no tracing, before anything imports the libraries that read these.
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "LANGSMITH_TRACING": "false",
        "LANGCHAIN_TRACING_V2": "false",
        "ANONYMIZED_TELEMETRY": "False",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "true",
        "TOKENIZERS_PARALLELISM": "false",
    }
)

from pathlib import Path
from typing import Any

import pytest

from gems.configs import GemsSettings
from tests.support.servers import GeneratorStub, OpenAIStub, ScriptedMLLM


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test gets its own data dir and no GEMS_* or OpenAI variables from the outer shell."""
    for var in list(os.environ):
        if var.startswith("GEMS_") or var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            monkeypatch.delenv(var, raising=False)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("GEMS_DATA_DIR", str(data_dir))
    from gems.configs.loading import settings_from_env

    settings_from_env.cache_clear()
    return data_dir


@pytest.fixture
def mllm_server():
    """Factory: `mllm_server(**script)` starts a scripted OpenAI-compatible server and returns (server, script)."""
    started: list[OpenAIStub] = []

    def start(**script: Any) -> tuple[OpenAIStub, ScriptedMLLM]:
        scripted = ScriptedMLLM(**script)
        server = OpenAIStub(chat=scripted).start()
        started.append(server)
        return server, scripted

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def gen_server():
    """Factory: `gen_server(**options)` starts a reference-protocol generator server."""
    started: list[GeneratorStub] = []

    def start(**options: Any) -> GeneratorStub:
        server = GeneratorStub(**options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.release.set()
        server.stop()


class Stubs:
    """A test's scripted MLLM server (`mllm`, its `script`) and generator server (`gen`), and settings for them."""

    def __init__(self, mllm: OpenAIStub, script: ScriptedMLLM, gen: GeneratorStub, data_dir: Path):
        self.mllm, self.script, self.gen, self.data_dir = mllm, script, gen, data_dir

    def settings(self, **sections: Any) -> GemsSettings:
        """Settings pointing at these servers; `sections` override whole sections or fields (`loop={...}`)."""
        return make_settings(self.mllm, self.gen, self.data_dir, **sections)


@pytest.fixture
def stubs(mllm_server, gen_server, isolated_env):
    """Factory: `stubs(gen={...}, **script)` starts both servers and returns a `Stubs`; stopped after the test."""

    def start(gen: dict[str, Any] | None = None, **script: Any) -> Stubs:
        mllm, scripted = mllm_server(**script)
        return Stubs(mllm, scripted, gen_server(**(gen or {})), isolated_env)

    return start


def make_settings(mllm: OpenAIStub, gen: GeneratorStub | None, data_dir: Path, **sections: Any) -> GemsSettings:
    """Settings pointing at the local servers; `sections` override whole sections or fields (`loop={...}`)."""
    base: dict[str, Any] = {
        "data_dir": str(data_dir),
        "mllm": {
            "base_url": mllm.base_url,
            "model": "stub-vlm",
            "api_key": "sk-test",
            "max_retries": 0,
            "timeout_s": 10,
        },
        "generator": {"backend": "http", "preset": None, "url": gen.url if gen else None, "max_retries": 0},
        "storage": {"checkpointer": "memory"},
        # Loop tests check the paper's behaviour; the cross-run store has its own tests.
        "memory": {"lessons": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return GemsSettings.model_validate(base)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Stable Diffusion pipeline saved with `save_pretrained`, like a local model folder."""
    from tests.support.tiny_pipelines import save_tiny_stable_diffusion

    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))
