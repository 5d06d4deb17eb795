"""A LangChain chat model that answers from a script, for unit tests that feed a node its replies directly.

Used with `gems.nodes.mllm.use_chat_model`: the node runs its real prompts, parsing and deadlines, and only the
model behind the network boundary is replaced. Each answer is a string, an `AIMessage` (tool calls, reasoning), or
an exception to raise; `replies` may also be a function of the messages sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

Answer = str | AIMessage | Exception


class ScriptedChat(BaseChatModel):
    """Answers with `replies` in order (or `replies(messages)`); records every conversation in `sent`."""

    # Any: pydantic would try to coerce an exception into a message.
    replies: list[Any] | Callable[[list[BaseMessage]], Answer] = Field(default_factory=list)
    sent: list[list[BaseMessage]] = Field(default_factory=list)
    tools_bound: list[list[str]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.sent.append(list(messages))
        if callable(self.replies):
            answer = self.replies(list(messages))
        else:
            if not self.replies:
                raise AssertionError(f"the script ran out of replies at call {len(self.sent)}")
            answer = self.replies.pop(0)
        if isinstance(answer, Exception):
            raise answer
        message = answer if isinstance(answer, AIMessage) else AIMessage(content=answer)
        message.usage_metadata = {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9}
        return ChatResult(generations=[ChatGeneration(message=message)])

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChat:  # type: ignore[override]
        self.tools_bound.append([getattr(t, "name", str(t)) for t in tools])
        return self
