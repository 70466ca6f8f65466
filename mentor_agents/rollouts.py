"""A student rollout: one run of the agent with the student model, as the reward and the trainer see it."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from mentor_agents.traces import ToolCall


class Rollout(BaseModel):
    """The structured messages of one student run, and the tokens it sampled.

    ``finished`` is False when the run was cut off by the token budget or the turn limit. The token fields are
    filled by the trainer: ``completion_mask`` is 1 on tokens the model sampled and 0 on tokens inserted by the chat
    template or by tool results, so that only the former carry loss.
    """

    model_config = ConfigDict(extra="forbid")
    task_id: str = ""
    messages: list[dict[str, Any]] = []
    tool_calls: list[ToolCall] = []
    invalid_calls: list[str] = []
    """Calls the student attempted that could not be parsed or named no offered tool, with the reason."""
    final_answer: str | None = None
    finished: bool = True
    turns: int = 0
    prompt_ids: list[int] = []
    completion_ids: list[int] = []
    completion_mask: list[int] = []
    logprobs: list[float] = []
    prefill_fallbacks: int = 0
    """Turns whose re-rendered history differed from the tokens cached for this rollout, so it re-prefilled from
    the first difference (see `mentor_agents.prefix_cache.RolloutKV`)."""

    @property
    def tool_names(self) -> set[str]:
        return {call.name for call in self.tool_calls}

    @classmethod
    def from_messages(cls, messages: list[dict[str, Any]], finished: bool = True, **fields: Any) -> Rollout:
        """A rollout from OpenAI-format messages (tool-call arguments as dicts or JSON strings).

        The final answer is the content of the last assistant message when that message calls no tool.
        Assistant messages may carry ``invalid_tool_calls`` (``[{"name", "error"}]``) for calls that failed to parse.
        """
        calls, invalid = [], []
        turns = 0
        for message in messages:
            if message.get("role") != "assistant":
                continue
            turns += 1
            for call in message.get("tool_calls") or []:
                function = call.get("function", call)
                args = function.get("arguments", function.get("args", {}))
                calls.append(ToolCall(id=call.get("id") or "", name=function["name"], args=args_dict(args)))
            for bad in message.get("invalid_tool_calls") or []:
                invalid.append(f"{bad.get('name')}: {bad.get('error')}")
        last = messages[-1] if messages else {}
        answer = None
        if last.get("role") == "assistant" and not last.get("tool_calls"):
            answer = content_text(last.get("content"))
        return cls(
            messages=messages, tool_calls=calls, invalid_calls=invalid, final_answer=answer,
            finished=finished, turns=turns, **fields,
        )


def args_dict(args: Any) -> dict[str, Any]:
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return {"__raw__": args}
    return args if isinstance(args, dict) else {"__raw__": args}


def content_text(content: Any) -> str:
    """Message content as plain text; list content (OpenAI parts) is joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
