"""Embedding gems in LangChain apps: the graph as a Runnable, in LCEL, and as a tool of a `create_agent` agent."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from langchain_core.runnables import Runnable, RunnableLambda
from langgraph.checkpoint.memory import InMemorySaver

from gems.graph import build_graph, run_config
from gems.interfaces.tool import gems_tool
from gems.memory.trajectory import run_result
from tests.support.net import write_stub_config

ROOT = Path(__file__).resolve().parents[1]
CRITERIA = ["Is there a fox?", "Is the fox red?"]


def result_image(result: dict) -> dict:
    return result["final"]["image"]


def test_compiled_graph_is_a_runnable(stubs):
    s = stubs(criteria=CRITERIA)
    settings = s.settings()
    graph = build_graph()
    assert isinstance(graph, Runnable)
    bound = graph.bind(context=settings).with_config(run_config(settings))
    assert bound.invoke({"prompt": "a red fox"})["success"] is True
    assert asyncio.run(bound.ainvoke({"prompt": "a red fox"}))["success"] is True
    nodes = [next(iter(chunk)) for chunk in bound.stream({"prompt": "a red fox"}, stream_mode="updates")]
    assert nodes[0] == "intake" and set(nodes[1:3]) == {"decompose", "planner"}
    assert {"review", "generate", "verify", "critique", "finalize", "learn"} <= set(nodes)
    results = bound.batch([{"prompt": "a red fox"}, {"prompt": "a red fox in snow"}])
    assert [r["success"] for r in results] == [True, True] and len(s.gen.prompts) == 5
    to_path = RunnableLambda(lambda r: run_result(r, settings=settings)["final"]["image"]["path"])
    chain = RunnableLambda(lambda s: {"prompt": s}) | bound | to_path
    assert Path(chain.invoke("a fox")).exists()
    assert "path" not in result_image(bound.invoke({"prompt": "a red fox"}))  # state names images by digest only


def test_tool_wrapper_runs_the_loop(stubs):
    s = stubs(criteria=CRITERIA, verdict=lambda q, n: "yes" if n >= 2 else "no")
    tool = gems_tool(s.settings(), checkpointer=InMemorySaver())
    assert tool.name == "generate_image" and set(tool.args) == {"prompt", "max_rounds"}
    message = tool.invoke(
        {"type": "tool_call", "id": "c1", "name": "generate_image", "args": {"prompt": "a red fox", "max_rounds": 3}}
    )
    text, image = message.content  # a summary, and the picture itself for the calling model and a chat UI
    assert text["text"].startswith("Image saved to ") and "all requirements passed: 2/2" in text["text"]
    assert image["type"] == "image" and image["mime_type"] == "image/png"
    assert base64.b64decode(image["base64"]).startswith(b"\x89PNG")
    assert Path(message.artifact["final"]["image"]["path"]).exists() and len(s.gen.prompts) == 2


def write_env_config(path: Path, mllm_url: str, gen_url: str) -> dict[str, str]:
    return {**os.environ, "GEMS_CONFIG": str(write_stub_config(path, mllm_url, gen_url))}


def test_agent_example_calls_gems_and_gets_an_image(mllm_server, gen_server, tmp_path):
    def agent(body):
        if any(m["role"] == "tool" for m in body["messages"]):
            result = next(m for m in body["messages"] if m["role"] == "tool")["content"]
            return f"Done. {result}"
        return {"content": None, "tool_calls": [("generate_image", {"prompt": "a red fox sitting in the snow"})]}

    mllm, script = mllm_server(criteria=CRITERIA, agent=agent)
    gen = gen_server()
    env = write_env_config(tmp_path / "c.yaml", mllm.base_url, gen.url)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "agent_tool.py"), "Draw a red fox in the snow"],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "[tool generate_image] Image saved to " in result.stdout
    path = result.stdout.split("Image saved to ")[1].split(" (")[0]
    assert Path(path).exists()
    assert gen.prompts == ["a red fox sitting in the snow"]
    agent_requests = [r["body"] for r in mllm.requests if "generate_image" in json.dumps(r["body"].get("tools", []))]
    assert len(agent_requests) == 2  # the tool call, then the answer after the tool result
    tool_reply = next(m for m in agent_requests[1]["messages"] if m["role"] == "tool")["content"]
    assert any(p.get("type") == "image_url" for p in tool_reply)  # the agent's model sees the image
    assert script.calls["verify"] == 2


def test_lcel_example_batches(mllm_server, gen_server, tmp_path):
    mllm, _ = mllm_server(criteria=CRITERIA)
    gen = gen_server()
    env = write_env_config(tmp_path / "c.yaml", mllm.base_url, gen.url)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lcel_chain.py"), "a lighthouse", "a windmill"],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["a lighthouse", "a windmill"]
    assert sorted(gen.prompts) == ["a lighthouse, at dusk, seen from the sea", "a windmill, at dusk, seen from the sea"]
