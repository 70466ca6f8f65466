"""Tool calls written as text: the Hermes/Qwen ``<tool_call>`` format, Llama-3 JSON, the Phi ``functools[...]`` /
``<|tool_call|>`` formats, fenced JSON and bare ``{"name", "arguments"}`` objects.

`parse_generation` parses student generations (with the tokenizer's response schema where it has one);
`parse_tool_calls`, in lenient mode, parses teachers that answer with calls in ``content``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from mentor_agents.messages import ArgumentsError, decode_arguments, tool_names

HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
PHI_BLOCK = re.compile(r"<\|tool_call\|>(.*?)(?:<\|/tool_call\|>|$)", re.DOTALL)
FENCED_BLOCK = re.compile(r"```(?:json|tool_call|tool_code)?\s*\n?(.*?)```", re.DOTALL)


@dataclass
class ParsedCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: new_call_id())


@dataclass
class InvalidCall:
    """A call-shaped piece of text that could not be turned into a call; ``error`` says why."""

    text: str
    error: str
    name: str | None = None


@dataclass
class ParsedMessage:
    content: str
    """The text with the parsed call markup removed."""
    calls: list[ParsedCall]
    invalid: list[InvalidCall]


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def parse_tool_calls(text: str, allowed: Iterable[str] | None = None, lenient: bool = False) -> ParsedMessage:
    """Extract tool calls from model text.

    Explicit markup (``<tool_call>``, ``<|tool_call|>``, ``functools[``) is always parsed. With ``lenient=True``,
    fenced JSON blocks and bare JSON objects shaped like ``{"name": ..., "arguments"|"parameters": {...}}`` are
    accepted as well, which is how many small models behind OpenAI endpoints write their calls.

    When ``allowed`` is given, a call to any other name is reported as invalid rather than returned; in lenient mode
    a bare object naming an unknown tool is left in the content as ordinary text.
    """
    found = Found(set(allowed) if allowed is not None else None)
    found.explicit_markup(text)
    if lenient and not found.spans:
        found.bare_json(text)
    content = text
    for start, end in sorted(found.spans, reverse=True):
        content = content[:start] + content[end:]
    content = content.replace("<|python_tag|>", "").strip()
    return ParsedMessage(content=content, calls=found.calls, invalid=found.invalid)


@dataclass
class Found:
    """What `parse_tool_calls` found in one text: calls, invalid calls, and the spans of text they took."""

    allowed: set[str] | None
    calls: list[ParsedCall] = field(default_factory=list)
    invalid: list[InvalidCall] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)

    def accept(self, payload: Any, raw: str, explicit: bool) -> bool:
        """Take the calls in ``payload`` (one or a list). Inside explicit markup a bad call is recorded as invalid;
        outside it, any bad call means the JSON was not meant as calls, and nothing is taken (False)."""
        found: list[ParsedCall] = []
        for item in payload if isinstance(payload, list) else [payload]:
            call = as_call(item)
            if isinstance(call, str) or (self.allowed is not None and call.name not in self.allowed):
                if not explicit:
                    return False
                if isinstance(call, str):
                    self.invalid.append(InvalidCall(raw.strip(), call))
                else:
                    self.invalid.append(InvalidCall(raw.strip(), f"unknown tool {call.name!r}", call.name))
                continue
            found.append(call)
        self.calls.extend(found)
        return True

    def explicit_markup(self, text: str) -> None:
        """``<tool_call>``, ``<|tool_call|>`` and ``functools[...]`` blocks."""
        for pattern in (HERMES_BLOCK, PHI_BLOCK):
            for m in pattern.finditer(text):
                self.spans.append(m.span())
                body = m.group(1).strip()
                payload, error = load_json(body)
                if error:
                    self.invalid.append(InvalidCall(body, error))
                else:
                    self.accept(payload, body, explicit=True)
        for m in re.finditer(r"functools\s*(\[)", text):
            payload, end = decode_at(text, m.start(1))
            if payload is None:
                self.invalid.append(InvalidCall(text[m.start():], "functools[...] is not a valid JSON list"))
                self.spans.append((m.start(), len(text)))
            else:
                self.spans.append((m.start(), end))
                self.accept(payload, text[m.start(1):end], explicit=True)

    def bare_json(self, text: str) -> None:
        """Fenced JSON blocks, else bare JSON values, shaped like calls."""
        for m in FENCED_BLOCK.finditer(text):
            payload, error = load_json(m.group(1).strip())
            if not error and self.accept(payload, m.group(1), explicit=False):
                self.spans.append(m.span())
        if not self.spans:
            for start, end, payload in bare_json_values(text):
                if self.accept(payload, text[start:end], explicit=False):
                    self.spans.append((start, end))


def as_call(item: Any) -> ParsedCall | str:
    """A `ParsedCall` from ``{"name", "arguments"|"parameters"}``, or the reason it is not one."""
    if not isinstance(item, dict):
        return f"expected a JSON object with 'name' and 'arguments', got {type(item).__name__}"
    if "function" in item and isinstance(item["function"], dict):
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str) or not name:
        return "the call has no 'name' string"
    try:
        args = decode_arguments(item.get("arguments", item.get("parameters")))
    except ArgumentsError as e:
        return f"arguments of {name!r} {e}"
    return ParsedCall(name=name, arguments=args)


def load_json(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"{e.msg} at line {e.lineno} column {e.colno}"
    except RecursionError:
        return None, "JSON nested too deeply"


def decode_at(text: str, start: int) -> tuple[Any, int]:
    try:
        return json.JSONDecoder().raw_decode(text, start)
    except (json.JSONDecodeError, RecursionError):
        return None, start


def bare_json_values(text: str) -> list[tuple[int, int, Any]]:
    """Top-level JSON objects or lists embedded in prose, as (start, end, value)."""
    found = []
    position = 0
    while True:
        starts = [i for i in (text.find("{", position), text.find("[", position)) if i >= 0]
        if not starts:
            return found
        start = min(starts)
        value, end = decode_at(text, start)
        if value is None:
            position = start + 1
        else:
            found.append((start, end, value))
            position = end


def parse_generation(
    text: str, tools: list[dict] | None = None, tokenizer=None
) -> tuple[str, list[ParsedCall], list[InvalidCall]]:
    """Split generated assistant text into ``(content, calls, invalid)``.

    Uses ``tokenizer.parse_response`` where the tokenizer has a response schema, and the text parser of
    `mentor_agents.toolcalls` (Hermes/Qwen ``<tool_call>``, Llama-3 JSON, Phi) otherwise or when the markup is
    malformed. Calls to tools not in ``tools`` are invalid. Never raises on bad model output.
    """
    names = tool_names(tools)
    if tokenizer is not None:
        from mentor_agents.chat_templates import end_markers  # loads trl, which a tokenizer's caller has loaded

        for marker in end_markers(tokenizer):
            text = text.split(marker, 1)[0]
    if tokenizer is not None and getattr(tokenizer, "response_template", None) is not None:
        try:
            message = tokenizer.parse_response(text, prefix="", tools=tools or None)
        except ValueError:
            message = None  # malformed markup: the text parser below says what is wrong with it
        if isinstance(message, dict):
            calls, invalid = [], []
            for item in message.get("tool_calls") or []:
                call = as_call(item)
                if isinstance(call, str):
                    invalid.append(InvalidCall(json.dumps(item, default=str), call))
                elif call.name not in names:
                    invalid.append(InvalidCall(json.dumps(item, default=str), f"unknown tool {call.name!r}", call.name))
                else:
                    calls.append(call)
            if calls or invalid:
                return (message.get("content") or "").strip(), calls, invalid
    # No call found by the schema: the text may still hold one in another format (Llama-3 JSON, Phi, fenced JSON).
    parsed = parse_tool_calls(text, allowed=names, lenient=True)
    return parsed.content, parsed.calls, parsed.invalid
