"""A student rollout: one run of the agent with the student model, as the reward and the trainer see it."""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mentor_agents.messages import ArgumentsError, ToolCall, content_text, decode_arguments


class RolloutSettings(BaseModel):
    """How a rollout runs: the model-turn cap, the token budget of one turn and the sampling temperature. This is
    all a ``rollout_fn`` gets of the training settings (`mentor_agents.training.TrainConfig.rollout`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_turns: int = Field(5, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, ge=0.0)


class InvalidToolCall(BaseModel):
    """A tool call the student attempted that the parser rejected.

    ``kind`` is ``unknown_tool`` when the call parsed but named a tool the agent does not offer (``name`` is that
    name), and ``malformed`` when its text did not parse into a call (``name`` is None).
    """

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    error: str
    kind: Literal["unknown_tool", "malformed"]

    @property
    def label(self) -> str:
        """The name, or ``<malformed>`` for a call without one: how metrics and reports count invalid calls."""
        return self.name or "<malformed>"


class Rollout(BaseModel):
    """The structured messages of one student run, and the tokens it sampled.

    ``finished`` is False when the run was cut off by the token budget or the turn limit; ``cut_by`` says which,
    when the rollout runner knows. The token fields are filled by the trainer: ``completion_mask`` is 1 on tokens the
    model sampled and 0 on tokens inserted by the chat template or by tool results, so that only the former carry
    loss.
    """

    model_config = ConfigDict(extra="forbid")
    task_id: str = ""
    messages: list[dict[str, Any]] = []
    tool_calls: list[ToolCall] = []
    invalid_calls: list[InvalidToolCall] = []
    """Calls the student attempted that could not be parsed or named no offered tool, with the reason."""
    final_answer: str | None = None
    finished: bool = True
    cut_by: Literal["token_budget", "turn_limit"] | None = None
    turns: int = 0
    correct: bool | None = None
    """The task verifier's verdict on this run, taken by the rollout runner with the run's final state; None when
    it was not taken (the reward then checks the answer against the reference)."""
    prompt_ids: list[int] = []
    completion_ids: list[int] = []
    completion_mask: list[int] = []
    logprobs: list[float] = []
    prefill_fallbacks: int = 0
    """Turns whose re-rendered history differed from the tokens cached for this rollout, so it re-prefilled from
    the first difference (see `mentor_agents.prefix_cache.RolloutKV`)."""
    rerendered_turns: int = 0
    """Assistant turns the chat template re-rendered differently from the tokens sampled, so `stitch` kept the
    sampled tokens and skipped the re-rendered ones (its non-strict path); DESIGN.md expects 0."""

    @model_validator(mode="after")
    def _cut_means_unfinished(self) -> Rollout:
        if self.cut_by is not None and self.finished:
            raise ValueError(f"a rollout cut off by the {self.cut_by.replace('_', ' ')} cannot be finished")
        return self

    @property
    def tool_names(self) -> set[str]:
        return {call.name for call in self.tool_calls}

    @classmethod
    def from_messages(cls, messages: list[dict[str, Any]], finished: bool = True, **fields: Any) -> Rollout:
        """A rollout from OpenAI-format messages (tool-call arguments as dicts or JSON strings).

        The final answer is the content of the last assistant message when that message calls no tool.
        A call whose arguments are not a JSON object is an invalid (malformed) call.
        Assistant messages may carry ``invalid_tool_calls`` (``[{"name", "error"}]``, optionally ``"kind"``) for calls
        the parser rejected. Without a ``kind``, one that has a name is a call to an unknown tool (the student's parser
        names only those) and one without is malformed.
        """
        calls, invalid = [], []
        turns = 0
        for message in messages:
            if message.get("role") != "assistant":
                continue
            turns += 1
            for call in message.get("tool_calls") or []:
                function = call.get("function", call)
                try:
                    args = decode_arguments(function.get("arguments", function.get("args")))
                except ArgumentsError as e:
                    invalid.append(InvalidToolCall(name=function["name"], error=f"arguments {e}", kind="malformed"))
                    continue
                calls.append(ToolCall(id=call.get("id") or "", name=function["name"], args=args))
            for bad in message.get("invalid_tool_calls") or []:
                kind = bad.get("kind") or ("unknown_tool" if bad.get("name") else "malformed")
                invalid.append(InvalidToolCall(name=bad.get("name"), error=bad.get("error") or "", kind=kind))
        last = messages[-1] if messages else {}
        answer = None
        if last.get("role") == "assistant" and not last.get("tool_calls"):
            answer = content_text(last.get("content"))
        return cls(
            messages=messages, tool_calls=calls, invalid_calls=invalid, final_answer=answer,
            finished=finished, turns=turns, **fields,
        )


class RolloutFn(Protocol):
    """Runs the agent once per reference (in order) with ``model`` as its chat model and returns token-exact rollouts:
    ``prompt_ids`` (the first model call's prompt), ``completion_ids``, ``completion_mask`` (1 = sampled) and
    ``logprobs``, and ``finished=False`` for a run cut off by ``settings.max_turns``. With ``use_vllm`` the training
    loop also passes ``backend=`` (a `mentor_agents.vllm_rollouts.VLLMClientBackend`) to generate the turns with.
    `mentor_agents.integrations.langgraph.rollouts.graph_rollout_fn` is the one for LangGraph agents."""

    def __call__(self, references: list[Any], model: Any, tokenizer: Any, settings: RolloutSettings,
                 **backend: Any) -> list[Rollout]: ...


class ScoredRollout(BaseModel):
    """One line of a GRPO stage's ``rollouts.jsonl``: a rollout of a training step, its reward and why."""

    model_config = ConfigDict(extra="forbid")
    step: int
    """The training step that used the rollout (the ``step`` of the same stage's ``metrics.jsonl``)."""
    task_id: str
    reward: float
    breakdown: dict[str, float]
    reason: str
    finished: bool
    cut_by: Literal["token_budget", "turn_limit"] | None = None
    turns: int
    tool_calls: list[ToolCall]
    """The student's parsed calls, in order."""
    invalid_calls: list[InvalidToolCall]
    final_answer: str | None = None
