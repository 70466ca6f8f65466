"""The student as a LangChain chat model, token-exact rollout recording, and swapping a model into a compiled graph.

```python
student = StudentChatModel.from_pretrained("tiny", do_sample=True)
agent = swap_model(teacher_agent, student)                # same tools, prompts and structure
recorder = TokenRecorder()
state = agent.invoke({"messages": [("user", "What is 2 plus 3?")]}, config={"callbacks": [recorder]})
rollout = rollout_from_run(state, recorder.records)      # messages + prompt/completion ids, mask, logprobs
```
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any, Literal, Sequence

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field
from transformers import StoppingCriteria, StoppingCriteriaList

from mentor_agents.integrations.langgraph.recording import to_openai_messages
from mentor_agents.messages import tool_names
from mentor_agents.prefix_cache import PrefixCache, end_of_turn
from mentor_agents.rollouts import Rollout
from mentor_agents.tokens import TokenRecord, stitch
from mentor_agents.chat_templates import end_markers, stop_token_ids
from mentor_agents.student import load_student
from mentor_agents.toolcalls import parse_generation

# ------------------------------------------------------------------------------------------------ token recording


class TokenRecorder(BaseCallbackHandler):
    """Collects the `TokenRecord` of every `StudentChatModel` call in one run, in call order.

    Pass a fresh one per run: ``graph.invoke(inputs, config={"callbacks": [recorder]})``. Recorders travel with the
    run's callbacks, so concurrent runs never mix.
    """

    def __init__(self) -> None:
        self.records: list[TokenRecord] = []


def rollout_from_run(
    state: dict[str, Any] | Sequence[BaseMessage],
    records: Sequence[TokenRecord] = (),
    *,
    task_id: str = "",
    finished: bool = True,
    cut_by: Literal["token_budget", "turn_limit"] | None = None,
    strict: bool = True,
) -> Rollout:
    """A `Rollout` from a finished graph state (or its messages) and the run's token records (may be empty);
    ``cut_by`` says what stopped a run that did not finish."""
    messages = openai_messages(state["messages"] if isinstance(state, dict) else state)
    tokens: dict[str, Any] = {}
    if records:
        tokens = stitch(records, strict=strict)._asdict()
    return Rollout.from_messages(messages, finished=finished, cut_by=cut_by, task_id=task_id, **tokens)


def openai_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain messages as OpenAI dicts for chat templates: tool-call arguments as dicts, tool messages named by
    the call they answer where the message has no name, invalid tool calls as ``[{"name", "error"}]``."""
    converted = to_openai_messages(messages)
    names: dict[str, str] = {}
    for original, message in zip(messages, converted):
        for call in message.get("tool_calls") or []:
            names[call["id"]] = call["function"]["name"]
        if message["role"] == "tool" and "name" not in message and message.get("tool_call_id") in names:
            message["name"] = names[message["tool_call_id"]]
        invalid = getattr(original, "invalid_tool_calls", None)
        if invalid:
            message["invalid_tool_calls"] = [{"name": c.get("name"), "error": c.get("error")} for c in invalid]
    return converted


# ---------------------------------------------------------------------------------------------------- chat model


class StudentChatModel(BaseChatModel):
    """A local transformers causal LM as a LangChain chat model that calls tools through its chat template.

    Tools bound with `bind_tools` are rendered by ``tokenizer.apply_chat_template(tools=...)``; the generation is
    parsed by `mentor_agents.toolcalls.parse_generation`. Calls get fresh ``call_...`` ids; calls that do not parse or
    name an unbound tool land in ``invalid_tool_calls`` (never an exception). ``tool_choice``: ``"none"`` leaves the
    text unparsed; a tool name makes calls to other tools invalid; ``"required"``/``"any"`` are accepted but cannot
    force a call (generation is not constrained). Generation stops at the eos / end-of-turn token or ``stop``.

    Calls reuse the keys and values of the longest prompt prefix an earlier call computed (``prefix_cache``, a
    bounded `PrefixCache` shared by copies of this model, emptied when the weights change), so the system prompt
    and tool schemas are prefilled once, not on every call; ``prefix_cache=None`` prefills every prompt in full.

    Token records: every call adds a `TokenRecord` to each `TokenRecorder` among the run's callbacks. With
    ``record_tokens=True`` a call without a recorder is an error, so a training loop cannot silently lose tokens.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Any
    tokenizer: Any
    model_name: str = "student"
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = False
    record_tokens: bool = False
    logits_processor: Any = None
    """An optional ``transformers.LogitsProcessorList`` applied during generation (constrained decoding)."""
    prefix_cache: PrefixCache | None = Field(default_factory=PrefixCache)
    cancel: threading.Event | None = None
    """When set, generation stops at the next token (the server sets it once the client is gone)."""

    @classmethod
    def from_pretrained(
        cls, name_or_dir: str, *, device: str | None = None, dtype: Any = None, cache_dir: str | None = None,
        adapter: str | None = None, **fields: Any,
    ) -> StudentChatModel:
        """Load a student by alias, hub id, local directory, GGUF file or LoRA adapter directory (optionally with
        ``adapter=DIR`` on top); see `mentor_agents.student.load_student`. A directory written by
        ``DistilledStudent.save`` loads its ``merged/`` model. ``fields`` set generation settings."""
        export = Path(str(name_or_dir)).expanduser()
        if (export / "merged" / "config.json").is_file() and not (export / "config.json").is_file():
            name_or_dir = str(export / "merged")
        model, tokenizer = load_student(name_or_dir, device=device, dtype=dtype, cache_dir=cache_dir, adapter=adapter)
        return cls(model=model, tokenizer=tokenizer, model_name=fields.pop("model_name", str(name_or_dir)), **fields)

    @property
    def _llm_type(self) -> str:
        return "mentor-student"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                "temperature": self.temperature, "top_p": self.top_p}

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Runnable:
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    @property
    def context_length(self) -> int | None:
        """The most prompt plus generated tokens the model takes (``max_position_embeddings``), if it says."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """The prompt length in tokens of ``messages`` with ``tools`` (OpenAI tool schemas), as `_chat` renders it."""
        return len(self._prompt_ids(messages, [convert_to_openai_tool(t) for t in tools or []]))

    def _prompt_ids(self, messages: list[BaseMessage], tools: list[dict] | None) -> list[int]:
        return list(self.tokenizer.apply_chat_template(
            openai_messages(messages), tools=tools or None, add_generation_prompt=True, tokenize=True,
            return_dict=True)["input_ids"])

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        return self._chat(messages, stop, _recorders(run_manager), **kwargs)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        return await asyncio.to_thread(self._chat, messages, stop, _recorders(run_manager), **kwargs)

    def _chat(self, messages: list[BaseMessage], stop: list[str] | None, recorders: list[TokenRecorder],
              tools: list[dict] | None = None, tool_choice: Any = None, **_: Any) -> ChatResult:
        import torch

        if self.record_tokens and not recorders:
            raise ValueError(
                "record_tokens=True but the run has no TokenRecorder: invoke the graph with "
                "config={'callbacks': [TokenRecorder()]}"
            )
        tokenizer, model = self.tokenizer, self.model
        prompt_ids = self._prompt_ids(messages, tools)
        end_ids = stop_token_ids(tokenizer, model)
        sampling = dict(temperature=self.temperature, top_p=self.top_p) if self.do_sample else {}
        settings = dict(
            max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, eos_token_id=end_ids,
            pad_token_id=tokenizer.pad_token_id, logits_processor=self.logits_processor, stop_strings=stop or None,
            tokenizer=tokenizer if stop else None, return_dict_in_generate=True, output_logits=bool(recorders),
            stopping_criteria=None if self.cancel is None else StoppingCriteriaList([WhenSet(self.cancel)]),
            **sampling,
        )
        if self.prefix_cache is not None:
            out = self.prefix_cache.generate(model, prompt_ids, **settings)
        else:
            input_ids = torch.tensor([prompt_ids], device=model.device)
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **settings)
        generated = out.sequences[0, len(prompt_ids):].tolist()
        generated = generated[:end_of_turn(generated, end_ids)]
        stopped = bool(generated) and generated[-1] in end_ids
        text = tokenizer.decode(generated[:-1] if stopped else generated, skip_special_tokens=False)

        if recorders:
            picked = getattr(out, "logprobs", None)  # a vLLM rollout backend returns them in place of logits
            if picked is None:
                logits = torch.stack(out.logits[: len(generated)], dim=1)[0].float()
                scale = self.temperature if self.do_sample else 1.0
                logprobs = torch.log_softmax(logits / scale, dim=-1)
                picked = logprobs[torch.arange(len(generated)), torch.tensor(generated, device=logprobs.device)]
                picked = picked.tolist()
            record = TokenRecord(prompt_ids, generated, list(picked[: len(generated)]), tuple(end_ids))
            for recorder in recorders:
                recorder.records.append(record)

        message = turn_message(text, tokenizer, tools, tool_choice, stopped=stopped)
        message.usage_metadata = {"input_tokens": len(prompt_ids), "output_tokens": len(generated),
                                  "total_tokens": len(prompt_ids) + len(generated)}
        message.response_metadata["model_name"] = self.model_name
        return ChatResult(generations=[ChatGeneration(message=message)])


def turn_message(text: str, tokenizer: Any, tools: list[dict] | None = None, tool_choice: Any = None,
                 stopped: bool = True) -> AIMessage:
    """The `AIMessage` of one generated turn, as `StudentChatModel` returns it: ``text`` (decoded, without the stop
    token) parsed for calls to ``tools`` (`mentor_agents.toolcalls.parse_generation`); calls that do not parse or name
    another tool go to ``invalid_tool_calls``. ``stopped``: the turn ended with a stop token (else it ran out of new
    tokens)."""
    if tool_choice == "none":
        for marker in end_markers(tokenizer):
            text = text.split(marker, 1)[0]
        content, calls, invalid = text, [], []
    else:
        offered = tools or []
        name = _chosen_name(tool_choice)
        if name is not None:
            offered = [t for t in offered if tool_names([t]) == {name}]
        content, calls, invalid = parse_generation(text, offered, tokenizer)
    return AIMessage(
        content=content,
        tool_calls=[{"name": c.name, "args": c.arguments, "id": c.id, "type": "tool_call"} for c in calls],
        invalid_tool_calls=[
            {"name": c.name, "args": c.text, "id": "call_" + uuid.uuid4().hex[:24], "error": c.error,
             "type": "invalid_tool_call"}
            for c in invalid
        ],
        response_metadata={"finish_reason": "tool_calls" if calls else ("stop" if stopped else "length")},
    )


class WhenSet(StoppingCriteria):
    """Stops generation at the next token once ``event`` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _recorders(run_manager: Any) -> list[TokenRecorder]:
    handlers = getattr(run_manager, "handlers", None) or []
    return [h for h in handlers if isinstance(h, TokenRecorder)]


def _chosen_name(tool_choice: Any) -> str | None:
    if isinstance(tool_choice, dict):
        return tool_choice.get("function", tool_choice).get("name")
    if isinstance(tool_choice, str) and tool_choice not in ("auto", "any", "required", "none"):
        return tool_choice
    return None


# ------------------------------------------------------------------------------------------------------ swapping
