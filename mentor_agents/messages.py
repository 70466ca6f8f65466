"""Chat messages in the OpenAI format, typed, and the few ways the rest of the package reads them.

```python
message = Message.model_validate({"role": "assistant", "content": None,
                                  "tool_calls": [{"id": "c1", "function": {"name": "add", "arguments": '{"a": 1}'}}]})
message.text, message.calls()            # "", [ToolCall(id="c1", name="add", args={"a": 1})]
decode_arguments('{"a": 1}')              # {"a": 1}; `ArgumentsError` saying why for anything else
tool_names(trace.tools)                   # {"add", ...}
```

Everywhere else messages travel as plain dicts in this format (traces, chat templates, the OpenAI API); these are
the one place that decides what their content says, what a call's arguments are and which tools a schema list
offers.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict

PARSED_FROM_TEXT = "mentor_parsed_from_text"
"""Key in ``AIMessage.additional_kwargs`` listing the ids of the tool calls a lenient parser recovered from the
message text; the recorder sets `ToolCall.parsed_from_text` from it."""


class ToolCall(BaseModel):
    """One call the model asked for."""

    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    args: dict[str, Any]
    parsed_from_text: bool = False
    """True when the call was recovered from the message text by the lenient parser, not sent as a tool call."""


class Message(BaseModel):
    """One OpenAI-format chat message. ``tool_calls`` are kept as sent (``{"id", "type", "function": {"name",
    "arguments"}}``, arguments as a JSON string or an object); other fields (``invalid_tool_calls``, provider
    extras) travel along untouched."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        return content_text(self.content)

    def calls(self) -> list[ToolCall]:
        """The message's tool calls with decoded arguments; `ArgumentsError` names a call whose arguments are not a
        JSON object."""
        calls = []
        for call in self.tool_calls or []:
            function = call.get("function", call)
            arguments = function.get("arguments", function.get("args"))
            calls.append(ToolCall(id=call.get("id") or "", name=function["name"], args=decode_arguments(arguments)))
        return calls


class ArgumentsError(ValueError):
    """Tool-call arguments that are not a JSON object; the message says what they are instead."""


def content_text(content: Any) -> str:
    """Message content as plain text: a string as it is, None as "", a list of text parts (OpenAI ``{"type":
    "text", "text"}`` or plain strings) joined; a list with other parts (images, structured tool output), or any
    other value a tool returned, as JSON."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return json.dumps(content, ensure_ascii=False, default=str)
    parts = [{"type": "text", "text": part} if isinstance(part, str) else part for part in content]
    if all(isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str)
           for part in parts):
        return "".join(part["text"] for part in parts)
    return json.dumps(parts, ensure_ascii=False, default=str)


def decode_arguments(arguments: str | dict[str, Any] | None) -> dict[str, Any]:
    """Tool-call arguments, sent as a JSON string (OpenAI) or an object, as a dict; None and "" are ``{}``.

    Raises `ArgumentsError` saying why for anything else (invalid JSON, or JSON that is not an object).
    """
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise ArgumentsError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        except RecursionError:
            raise ArgumentsError("not valid JSON: nested too deeply") from None
    if not isinstance(arguments, dict):
        raise ArgumentsError(f"must be a JSON object, got {type(arguments).__name__}")
    return arguments


def tool_names(tools: Iterable[dict[str, Any]] | None) -> set[str]:
    """The names of tool schemas, OpenAI-format (``{"type": "function", "function": {"name", ...}}``) or bare
    (``{"name", ...}``); schemas without a name (built-in tools of some providers) are left out."""
    names = set()
    for schema in tools or ():
        function = schema.get("function", schema)
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names
