"""gems as a LangChain tool, so an agent (e.g. `langchain.agents.create_agent`) can make images with it."""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from gems.configs import GemsSettings, load_settings
from gems.configs.settings import MAX_ROUNDS
from gems.graph.builder import build_graph, run_config, run_input
from gems.memory.artifacts import ArtifactStore
from gems.memory.trajectory import run_result

TOOL_DESCRIPTION = (
    "Generate an image from a detailed description. The tool plans, renders, checks the image against every "
    "requirement in the description and retries until they all pass. Returns the image itself, its file path and "
    "how many requirements passed."
)


class GenerateImageInput(BaseModel):
    """Arguments the agent fills in."""

    prompt: str = Field(description="what the image must show: objects, counts, colours, positions, text")
    max_rounds: int | None = Field(None, ge=1, le=MAX_ROUNDS, description="attempts before returning the best image")


def gems_tool(
    settings: GemsSettings | None = None, *, checkpointer: Any = None, store: Any = None, name: str = "generate_image"
) -> BaseTool:
    """Wrap the GEMS graph as a LangChain tool.

    Args:
        settings: run settings (default: `load_settings()`, i.e. `GEMS_CONFIG` and `GEMS_*`).
        checkpointer: where runs are checkpointed (default: none; each call is one fresh thread).
        store: a LangGraph store for cross-run lessons (default: the one the settings describe).
        name: the tool's name as the agent sees it.

    Returns:
        A `StructuredTool` whose content is a one-line summary plus the image as a standard image content block
        (so the calling model and a chat UI see it), and whose artifact is the run's result
        (`gems.memory.trajectory.run_result`, with the image's file path).
    """
    base = settings or load_settings()
    graph = build_graph(checkpointer=checkpointer, store=store)

    def generate_image(prompt: str, max_rounds: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        run_settings = base
        if max_rounds is not None:
            run_settings = base.model_copy(update={"loop": base.loop.model_copy(update={"max_rounds": max_rounds})})
        thread_id = f"tool-{uuid.uuid4().hex[:12]}"
        result = graph.invoke(
            run_input(prompt, run_settings), run_config(run_settings, thread_id), context=run_settings
        )
        public = run_result(result, thread_id=thread_id, artifacts_dir=run_settings.artifacts_dir)
        final = public.get("final") or {}
        image = final.get("image") or {}
        status = {True: "all requirements passed", None: "not verified"}.get(result.get("success"), "best attempt")
        summary = (
            f"Image saved to {image.get('path')} ({status}: {final.get('passed')}/{final.get('total')} "
            f"requirements, round {final.get('round')})."
        )
        content: list[dict[str, Any]] = [{"type": "text", "text": summary}]
        if image.get("sha256"):
            store = ArtifactStore(run_settings.artifacts_dir)
            url = store.data_url(image, run_settings.mllm.image_max_side)  # the size the MLLM roles see
            content.append({"type": "image", "base64": url.split(",", 1)[1], "mime_type": "image/png"})
        return content, public

    return StructuredTool.from_function(
        func=generate_image,
        name=name,
        description=TOOL_DESCRIPTION,
        args_schema=GenerateImageInput,
        response_format="content_and_artifact",
    )
