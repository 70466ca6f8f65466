"""Any OpenAI-compatible endpoint as the teacher: a configured `ChatOpenAI`, optionally lenient.

Small teachers behind OpenAI endpoints often write their tool calls as text in ``content`` (a fenced or bare
``{"name": ..., "arguments": {...}}``) instead of ``tool_calls``. With ``lenient=True`` such calls, when they name a
tool that was offered, are turned into real tool calls, so the agent's graph runs them, and marked in
``additional_kwargs["mentor_parsed_from_text"]`` (the recorder sets ``ToolCall.parsed_from_text`` from it).

```python
teacher = OpenAITeacher(base_url="http://127.0.0.1:8080/v1", model="qwen2.5-coder-1.5b", lenient=True)
agent = create_agent(teacher.chat_model(), tools)
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatResult
from langchain_openai import ChatOpenAI

from mentor_agents.errors import InvalidInputError
from mentor_agents.messages import PARSED_FROM_TEXT, tool_names
from mentor_agents.toolcalls import parse_tool_calls


def promote_text_calls(message: AIMessage, allowed: set[str]) -> AIMessage:
    """``message`` with the calls written in its text (to tools in ``allowed``) moved into ``tool_calls``.

    A message that already has tool calls, or whose text holds no call to an allowed tool, is returned unchanged.
    """
    if message.tool_calls or not allowed:
        return message
    parsed = parse_tool_calls(message.text, allowed=allowed, lenient=True)
    if not parsed.calls:
        return message
    calls = [{"name": c.name, "args": c.arguments, "id": c.id, "type": "tool_call"} for c in parsed.calls]
    return message.model_copy(update={
        "content": parsed.content,
        "tool_calls": calls,
        "additional_kwargs": {**message.additional_kwargs, PARSED_FROM_TEXT: [c.id for c in parsed.calls]},
    })


class LenientChatOpenAI(ChatOpenAI):
    """`ChatOpenAI` that also accepts tool calls written as text in ``content`` (see `promote_text_calls`)."""

    # Streamed chunks would reach the graph before the whole text could be parsed, so always generate in one piece.
    disable_streaming: bool = True

    def _generate(self, messages: list[Any], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        result = super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
        return self._promote(result, kwargs.get("tools"))

    async def _agenerate(self, messages: list[Any], stop: list[str] | None = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        result = await super()._agenerate(messages, stop=stop, run_manager=run_manager, **kwargs)
        return self._promote(result, kwargs.get("tools"))

    @staticmethod
    def _promote(result: ChatResult, tools: list[dict[str, Any]] | None) -> ChatResult:
        allowed = tool_names(tools)
        for generation in result.generations:
            message = promote_text_calls(generation.message, allowed)
            if message is not generation.message:
                generation.message = message
                generation.generation_info = {**(generation.generation_info or {}), "finish_reason": "tool_calls"}
        return result


@dataclass
class OpenAITeacher:
    """A teacher model behind an OpenAI-compatible chat-completions endpoint.

    ``base_url``, ``model`` and ``api_key`` default to ``$OPENAI_BASE_URL`` (else the OpenAI API),
    ``$MENTOR_TEACHER_MODEL`` and ``$OPENAI_API_KEY``. Local servers accept any non-empty key. Retries are left to
    the recorder, so the client itself retries at most ``max_retries`` times (default 0).
    """

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 120.0
    max_retries: int = 0
    temperature: float | None = None
    lenient: bool = False

    def __post_init__(self) -> None:
        self.base_url = self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.model = self.model or os.environ.get("MENTOR_TEACHER_MODEL")
        self.api_key = self.api_key or os.environ.get("OPENAI_API_KEY")
        if not self.model:
            raise InvalidInputError("OpenAITeacher needs a model name: pass model=... or set MENTOR_TEACHER_MODEL")
        if not self.api_key:
            raise InvalidInputError("OpenAITeacher needs an API key: pass api_key=... or set OPENAI_API_KEY "
                                    "(any non-empty string for a local server)")

    def chat_model(self) -> BaseChatModel:
        """A `ChatOpenAI` (or `LenientChatOpenAI` with ``lenient=True``) for this endpoint."""
        cls = LenientChatOpenAI if self.lenient else ChatOpenAI
        return cls(base_url=self.base_url, model=self.model, api_key=self.api_key, timeout=self.timeout_s,
                   max_retries=self.max_retries, temperature=self.temperature)
