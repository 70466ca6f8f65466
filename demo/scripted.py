"""The chat-model plumbing shared by the scripted teachers: stand-ins for a teacher LLM with no model behind them."""

from __future__ import annotations

from typing import Any, Sequence

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool

from mentor_agents.messages import tool_names


class ScriptedTeacher(BaseChatModel):
    """A deterministic chat model whose subclass decides each turn in `_respond`; usage is a rough
    4-characters-per-token estimate."""

    model_name: str = "scripted-teacher"

    @property
    def _llm_type(self) -> str:
        return self.model_name

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _respond(self, messages: list[BaseMessage], bound: set[str]) -> AIMessage:
        raise NotImplementedError

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        bound = tool_names(kwargs.get("tools"))
        message = self._respond(messages, bound)
        chars_in = sum(len(str(m.content)) for m in messages)
        chars_out = len(str(message.content)) + sum(len(str(c["args"])) + len(c["name"]) for c in message.tool_calls)
        input_tokens, output_tokens = max(1, chars_in // 4), max(1, chars_out // 4)
        message.usage_metadata = {"input_tokens": input_tokens, "output_tokens": output_tokens,
                                  "total_tokens": input_tokens + output_tokens}
        return ChatResult(generations=[ChatGeneration(message=message)])
