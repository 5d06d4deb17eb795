"""An agent that calls gems to make images: `langchain.agents.create_agent` with the `generate_image` tool.

The agent's own model is the OpenAI-compatible endpoint from your gems config (mllm.*); gems runs its loop
inside the tool call. Configure with GEMS_CONFIG or GEMS_* variables, then:

    python examples/agent_tool.py "Make me a poster image of three origami cranes over a red bridge"
"""

from __future__ import annotations

import sys

from langchain.agents import create_agent
from langchain_openai import ChatOpenAI

from gems.configs import load_settings
from gems.interfaces.tool import gems_tool


def main(request: str) -> None:
    settings = load_settings()
    model = ChatOpenAI(
        model=settings.mllm.model,
        base_url=settings.mllm.base_url,
        api_key=settings.mllm.resolved_api_key(),
        use_responses_api=False,
        max_retries=settings.mllm.max_retries,
    )
    agent = create_agent(
        model,
        tools=[gems_tool(settings)],
        system_prompt="You help people get images. Use generate_image with a detailed description, then tell "
        "the user where the image is.",
    )
    result = agent.invoke({"messages": [{"role": "user", "content": request}]})
    for message in result["messages"]:
        if message.type == "tool":
            print(f"[tool {message.name}] {message.text}")  # the summary; the image travels as a content block
    print(result["messages"][-1].content)


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]) or "Draw a red fox sitting in the snow under a full moon.")
