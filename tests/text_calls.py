"""A stand-in teacher that writes its tool calls as text, shared by the lenient-parse tests."""

import json
import re

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool


class TextToolCallingModel(BaseChatModel):
    """A teacher that writes its tool calls as JSON text in ``content``, as small models behind OpenAI endpoints do.

    "What is A times B?" -> a fenced JSON call to ``multiply``; "What is A plus B?" -> prose with a bare JSON call to
    ``add``; "Teleport to X" -> a bare JSON call to ``teleport``, a tool nobody offered. After a tool result it
    answers ``Answer: <result>``.
    """

    @property
    def _llm_type(self) -> str:
        return "text-tool-calling"

    def bind_tools(self, tools, **kwargs):
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            text = f"Answer: {last.text}"
        elif m := re.fullmatch(r"What is (\d+) times (\d+)\?", last.text):
            call = {"name": "multiply", "arguments": {"a": int(m[1]), "b": int(m[2])}}
            text = f"```json\n{json.dumps(call)}\n```"
        elif m := re.fullmatch(r"What is (\d+) plus (\d+)\?", last.text):
            text = f'I will use a tool. {{"name": "add", "arguments": {{"a": {m[1]}, "b": {m[2]}}}}}'
        else:
            text = '{"name": "teleport", "arguments": {"to": "the moon"}}'
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])
