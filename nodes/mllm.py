"""The MLLM adapter: every LLM/MLLM role talks to an OpenAI-compatible chat-completions endpoint via ChatOpenAI."""

from __future__ import annotations

import asyncio
import functools
import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import httpx
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from gems.configs import GemsError, MLLMSettings
from gems.configs.settings import cache_key


class MLLMError(GemsError, RuntimeError):
    """The MLLM endpoint failed or answered something unusable; the message is one line."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)


class GemsChatOpenAI(ChatOpenAI):
    """ChatOpenAI that keeps a server's separate reasoning text (`reasoning_content` or `reasoning`).

    vLLM, SGLang and DeepSeek-style servers return the model's thinking next to `content`; the stock client drops
    it, but GEMS feeds it to the compressor as the round's "thought".
    """

    def _create_chat_result(self, response: Any, generation_info: dict | None = None):  # type: ignore[override]
        result = super()._create_chat_result(response, generation_info)
        raw = response if isinstance(response, dict) else response.model_dump()
        for choice, generation in zip(raw.get("choices") or [], result.generations, strict=False):
            message = choice.get("message") or {}
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            if isinstance(reasoning, str) and reasoning.strip():
                generation.message.additional_kwargs["reasoning_content"] = reasoning
        return result


@dataclass
class Reply:
    """One MLLM answer: the visible text, the separate reasoning if the server sent any, and token usage."""

    text: str
    thought: str | None = None
    usage: dict[str, int] = field(default_factory=dict)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part)
            for part in content
            if not isinstance(part, dict) or part.get("type") in (None, "text")
        )
    return str(content or "")


def split_thinking(text: str) -> tuple[str, str | None]:
    """Separate inline `<think>…</think>` blocks (Ollama, some vLLM templates) from the answer."""
    thoughts = [t.strip() for t in _THINK_RE.findall(text)]
    answer = _THINK_RE.sub("", text)
    # An unclosed <think> means the answer was cut off inside the reasoning.
    if "<think>" in answer.lower():
        head, _, tail = answer.partition("<think>")
        answer, thoughts = head, [*thoughts, tail.strip()]
    thought = "\n".join(t for t in thoughts if t) or None
    return answer.strip(), thought


def image_part(data_url: str) -> dict[str, Any]:
    """Return an OpenAI chat-completions image content block for a data URL."""
    return {"type": "image_url", "image_url": {"url": data_url}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _describe_error(exc: Exception, settings: MLLMSettings) -> str:
    import openai

    where = f"MLLM endpoint {settings.base_url} (model {settings.model})"
    if isinstance(exc, openai.APITimeoutError):
        return f"{where} timed out after {settings.timeout_s:g}s; raise mllm.timeout_s or check the server"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach the {where}; start the server or set GEMS_MLLM_BASE_URL / mllm.base_url"
    if isinstance(exc, openai.AuthenticationError):
        return f"the {where} rejected the API key; set GEMS_MLLM_API_KEY (or OPENAI_API_KEY)"
    if isinstance(exc, openai.NotFoundError):
        return f"the {where} answered 404: check mllm.model and that mllm.base_url ends in /v1"
    if isinstance(exc, openai.APIStatusError):
        detail = re.sub(r"^Error code: \d+ - ", "", " ".join(str(exc.message).split()))[:200]
        return f"the {where} answered HTTP {exc.status_code}: {detail}"
    return f"the {where} failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


class MLLM:
    """A thin, thread-safe wrapper that sends one system + one user message and returns a `Reply`."""

    def __init__(self, settings: MLLMSettings):
        self.settings = settings
        kwargs: dict[str, Any] = {
            "model": settings.model,
            "base_url": settings.base_url,
            "api_key": settings.resolved_api_key(),
            "timeout": settings.timeout_s,
            "max_retries": settings.max_retries,
            "use_responses_api": False,  # chat completions, so vLLM, SGLang and Ollama work
            # Whole answers even under astream_events: the reasoning text is read from complete responses.
            "disable_streaming": True,
        }
        if settings.temperature is not None:
            kwargs["temperature"] = settings.temperature
        if settings.max_tokens is not None:
            kwargs["max_completion_tokens"] = settings.max_tokens
        if settings.extra_body:
            kwargs["extra_body"] = dict(settings.extra_body)
        self._kwargs = kwargs
        self.chat = GemsChatOpenAI(**kwargs)
        # An async HTTP pool belongs to the event loop that opened it: one client per loop.
        self._async_chats: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GemsChatOpenAI] = (
            weakref.WeakKeyDictionary()
        )

    def _achat(self) -> GemsChatOpenAI:
        loop = asyncio.get_running_loop()
        chat = self._async_chats.get(loop)
        if chat is None:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            client = httpx.AsyncClient(timeout=self.settings.timeout_s, limits=limits)
            chat = self._async_chats[loop] = GemsChatOpenAI(**self._kwargs, http_async_client=client)
        return chat

    @staticmethod
    def _messages(system: str, user: str | list[dict[str, Any]]) -> list[Any]:
        content: str | list[str | dict[Any, Any]] = user if isinstance(user, str) else list(user)
        return [SystemMessage(content=system), HumanMessage(content=content)]

    def ask(self, system: str, user: str | list[dict[str, Any]]) -> Reply:
        """Send one exchange and return the reply; raises `MLLMError` with a one-line message on failure."""
        try:
            message = self.chat.invoke(self._messages(system, user))
        except Exception as exc:
            raise MLLMError(_describe_error(exc, self.settings), getattr(exc, "status_code", None)) from exc
        return _reply(message, user)

    async def aask(self, system: str, user: str | list[dict[str, Any]]) -> Reply:
        """`ask` on the running event loop."""
        try:
            message = await self._achat().ainvoke(self._messages(system, user))
        except Exception as exc:
            raise MLLMError(_describe_error(exc, self.settings), getattr(exc, "status_code", None)) from exc
        return _reply(message, user)

    def converse(self, messages: list[Any], tools: list[Any] | None = None) -> Any:
        """Send a whole conversation (optionally with tools bound) and return the `AIMessage`."""
        runnable = self.chat.bind_tools(tools) if tools else self.chat
        try:
            return runnable.invoke(messages)
        except Exception as exc:
            raise MLLMError(_describe_error(exc, self.settings), getattr(exc, "status_code", None)) from exc

    async def aconverse(self, messages: list[Any], tools: list[Any] | None = None) -> Any:
        """`converse` on the running event loop."""
        chat = self._achat()
        runnable = chat.bind_tools(tools) if tools else chat
        try:
            return await runnable.ainvoke(messages)
        except Exception as exc:
            raise MLLMError(_describe_error(exc, self.settings), getattr(exc, "status_code", None)) from exc


def _reply(message: Any, user: str | list[dict[str, Any]]) -> Reply:
    """The `Reply` of an `AIMessage`: visible text, reasoning (separate or inline `<think>`), token usage."""
    content = user if isinstance(user, list) else []
    text, inline_thought = split_thinking(_text_of(message.content))
    thought = message.additional_kwargs.get("reasoning_content") or inline_thought
    usage = {k: int(v) for k, v in (getattr(message, "usage_metadata", None) or {}).items() if isinstance(v, int)}
    usage["image_parts"] = sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image_url")
    return Reply(text=text, thought=thought, usage=usage)


_lock = threading.Lock()


@functools.lru_cache(maxsize=16)
def _cached_mllm(settings_json: str) -> MLLM:
    return MLLM(MLLMSettings.model_validate_json(settings_json))


def get_mllm(settings: MLLMSettings) -> MLLM:
    """Return a process-wide client for these settings (clients keep their HTTP connection pools)."""
    with _lock:
        return _cached_mllm(cache_key(settings))
