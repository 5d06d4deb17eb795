"""The MLLM adapter: every LLM/MLLM role talks to a LangChain chat model (`ChatOpenAI` on any OpenAI-compatible
server by default, or the model in this process with `mllm.backend: transformers`), asynchronously and with a
deadline per call."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from langgraph.constants import TAG_NOSTREAM

from gems.configs import GemsError, MLLMSettings
from gems.configs.errors import one_line, short, shown_url
from gems.configs.loading import cache_key
from gems.memory.aio import PerLoop, within
from gems.nodes.local_vlm import LocalModelError, TransformersChat


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

    if settings.backend == "transformers":
        return f"the in-process model {settings.model} failed: {type(exc).__name__}: {short(str(exc), 200)}"
    where = f"MLLM endpoint {shown_url(settings.base_url)} (model {settings.model})"
    if isinstance(exc, openai.APITimeoutError):
        return f"{where} timed out after {settings.timeout_s:g}s; raise mllm.timeout_s or check the server"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach the {where}; start the server or set GEMS_MLLM_BASE_URL / mllm.base_url"
    if isinstance(exc, openai.AuthenticationError):
        return f"the {where} rejected the API key; set GEMS_MLLM_API_KEY (or OPENAI_API_KEY)"
    if isinstance(exc, openai.NotFoundError):
        return f"the {where} answered 404: check mllm.model and that mllm.base_url ends in /v1"
    if isinstance(exc, openai.APIStatusError):
        detail = short(re.sub(r"^Error code: \d+ - ", "", one_line(str(exc.message))), 200)
        return f"the {where} answered HTTP {exc.status_code}: {detail}"
    return f"the {where} failed: {type(exc).__name__}: {short(str(exc), 200)}"


_BACKOFF_S = 8.0  # the most one retry waits (the openai client's backoff cap)
_GRACE_S = 1.0  # past the client's own timeouts, so a silent server gets the client's message, a dripping one ours

# Internal role conversations are not chat: LangGraph's "messages" stream skips model runs tagged like this.
_INTERNAL = {"tags": [TAG_NOSTREAM]}

# A chat model set for the current context (`use_chat_model`) replaces the configured endpoint for every role.
_chat_override: contextvars.ContextVar[BaseChatModel | None] = contextvars.ContextVar("gems_chat_model", default=None)


@contextlib.contextmanager
def use_chat_model(chat: BaseChatModel) -> Iterator[BaseChatModel]:
    """Play every MLLM role with `chat` (any LangChain chat model) for runs started inside this block.

    For embedding gems in a LangChain app that already holds a model, and for tests that feed scripted replies to
    a node. Deadlines, parsing and the prompts are unchanged.
    """
    token = _chat_override.set(chat)
    try:
        yield chat
    finally:
        _chat_override.reset(token)


class MLLM:
    """Sends a role's messages to the chat model and returns a `Reply`; every call has a wall-clock deadline.

    The deadline covers the whole call, retries included (`timeout_s` per try plus backoff), because a per-read
    timeout does not bound a server that answers one byte at a time. Past it, the call is cancelled (its socket
    closed) and `MLLMError` says so in one line.
    """

    def __init__(self, settings: MLLMSettings, chat: BaseChatModel | None = None):
        self.settings = settings
        self.local = settings.backend == "transformers"
        retries = 0 if self.local else settings.max_retries  # nothing to retry in this process
        self.deadline_s = settings.timeout_s * (retries + 1) + _BACKOFF_S * retries + _GRACE_S
        # The in-process model is one object for every event loop; its weights load once per process.
        self._fixed = chat if chat is not None or not self.local else TransformersChat.from_settings(settings)
        # An async HTTP pool belongs to the event loop that opened it: one client per loop.
        self._chats: PerLoop[BaseChatModel] = PerLoop(self._openai_chat)

    def _openai_chat(self) -> BaseChatModel:
        s = self.settings
        kwargs: dict[str, Any] = {
            "model": s.model,
            "base_url": s.base_url,
            "api_key": s.resolved_api_key(),
            "timeout": s.timeout_s,
            "max_retries": s.max_retries,
            "use_responses_api": False,  # chat completions, so vLLM, SGLang and Ollama work
            # Whole answers even under astream_events: the reasoning text is read from complete responses.
            "disable_streaming": True,
            "http_async_client": httpx.AsyncClient(
                timeout=s.timeout_s, limits=httpx.Limits(max_connections=None, max_keepalive_connections=64)
            ),
        }
        if s.temperature is not None:
            kwargs["temperature"] = s.temperature
        if s.max_tokens is not None:
            kwargs["max_completion_tokens"] = s.max_tokens
        if s.extra_body:
            kwargs["extra_body"] = dict(s.extra_body)
        return GemsChatOpenAI(**kwargs)

    @property
    def chat(self) -> BaseChatModel:
        """The chat model for the running event loop."""
        return self._fixed or self._chats.get()

    def _overdue(self) -> MLLMError:
        s = self.settings
        if self.local:
            return MLLMError(
                f"the in-process model {s.model} gave no complete answer within {self.deadline_s:g}s; raise "
                "mllm.timeout_s or lower mllm.max_tokens"
            )
        return MLLMError(
            f"the MLLM endpoint {shown_url(s.base_url)} gave no complete answer within {self.deadline_s:g}s "
            f"(mllm.timeout_s {s.timeout_s:g} x {s.max_retries + 1} tries); check the server or raise mllm.timeout_s"
        )

    async def _call(self, runnable: Any, messages: list[Any]) -> Any:
        load = getattr(self._fixed, "aload", None)
        try:
            if load is not None:
                await load()  # before the deadline starts: a first download takes minutes
            return await within(self.deadline_s, runnable.ainvoke(messages, _INTERNAL), self._overdue)
        except MLLMError:
            raise
        except LocalModelError as exc:
            raise MLLMError(str(exc), exc.status_code) from exc
        except Exception as exc:
            raise MLLMError(_describe_error(exc, self.settings), getattr(exc, "status_code", None)) from exc

    async def ask(self, system: str, user: str | list[dict[str, Any]]) -> Reply:
        """Send one system + user exchange and return the reply; raises `MLLMError` with a one-line message."""
        content: str | list[str | dict[Any, Any]] = user if isinstance(user, str) else list(user)
        message = await self._call(self.chat, [SystemMessage(content=system), HumanMessage(content=content)])
        return _reply(message, user)

    async def converse(self, messages: list[Any], tools: list[Any] | None = None) -> AIMessage:
        """Send a whole conversation (optionally with tools bound) and return the `AIMessage`."""
        chat = self.chat
        return await self._call(chat.bind_tools(tools) if tools else chat, messages)


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
    """The MLLM for these settings: the context's chat model (`use_chat_model`), else a process-wide client."""
    chat = _chat_override.get()
    if chat is not None:
        return MLLM(settings, chat=chat)
    with _lock:
        return _cached_mllm(cache_key(settings))
