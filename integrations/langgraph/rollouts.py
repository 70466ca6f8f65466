"""GRPO rollouts through the real graph: the student swapped into the agent, the agent's own tools executed.

```python
from mentor_agents.training import TrainConfig, train
from mentor_agents.integrations.langgraph.rollouts import graph_rollout_fn

result = train(TrainConfig(method="mentor"), "out/tiny", references=refs, rollout_fn=graph_rollout_fn(agent))
```

All rollouts of a step run at once, one thread each, and their model calls are generated together: a call waits
until every unfinished rollout has asked for its next turn (or ended), then one batched ``generate`` serves them
all. Batch membership and order are fixed by the rollout index, so a seeded run samples the same tokens every time.
The shared prompt is prefilled once per step and each rollout keeps its KV cache across its turns
(`mentor_agents.prefix_cache.RolloutKV`), so a turn prefills only the tokens added since the last one.
"""

from __future__ import annotations

import contextvars
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, Sequence

import torch
from langgraph.errors import GraphRecursionError

from mentor_agents.environment import Environment, EnvironmentFactory, map_agent
from mentor_agents.integrations.langgraph.student_model import (
    StudentChatModel,
    TokenRecorder,
    rollout_from_run,
    swap_model,
)
from mentor_agents.prefix_cache import RolloutKV
from mentor_agents.references import RewardReference
from mentor_agents.rollouts import Rollout
from mentor_agents.training import RolloutFn, TrainConfig

_SLOT: contextvars.ContextVar[int] = contextvars.ContextVar("mentor_rollout_slot")


class TurnLimitExceeded(RuntimeError):
    """A rollout asked for more model turns than ``max_turns``."""


class BatchedGenerator:
    """Stands in for a model inside `StudentChatModel`: ``generate`` calls from concurrent rollouts are gathered
    into one batch. Everything else is forwarded to the model. A rollout's call beyond ``max_turns`` raises
    `TurnLimitExceeded`, which ends that rollout as cut off.

    With ``reuse_kv`` (the default) each rollout keeps its KV cache across turns (see `RolloutKV`;
    ``prefill_fallbacks[slot]`` counts the turns whose re-rendered history differed from the cached tokens);
    ``reuse_kv=False`` prefills every prompt in full (a left-padded ``generate``), for exactness tests and
    benchmarks."""

    def __init__(self, model: Any, pad_token_id: int, rollouts: int, max_turns: int, reuse_kv: bool = True):
        self.model, self.pad_token_id, self.max_turns = model, pad_token_id, max_turns
        self.kv = RolloutKV(model, pad_token_id) if reuse_kv else None
        self.active = rollouts
        self.calls = [0] * rollouts
        self.pending: dict[int, tuple[list[int], dict[str, Any]]] = {}
        self.results: dict[int, Any] = {}
        self.cond = threading.Condition()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        slot = _SLOT.get()
        self.calls[slot] += 1
        if self.calls[slot] > self.max_turns:
            raise TurnLimitExceeded(f"rollout {slot} asked for model turn {self.calls[slot]} of at most "
                                    f"{self.max_turns}")
        with self.cond:
            self.pending[slot] = (input_ids[0].tolist(), kwargs)
            self._flush_if_all_waiting()
            while slot not in self.results:
                self.cond.wait()
            result = self.results.pop(slot)
        if isinstance(result, BaseException):
            raise result
        return result

    def finish(self) -> None:
        """One rollout has ended; the others no longer wait for it."""
        with self.cond:
            self.active -= 1
            if self.kv is not None:
                self.kv.drop(_SLOT.get())
            self._flush_if_all_waiting()

    @property
    def prefill_fallbacks(self) -> Counter[int]:
        return self.kv.prefill_fallbacks if self.kv is not None else Counter()

    def _flush_if_all_waiting(self) -> None:
        if not self.pending or len(self.pending) < self.active:
            return
        batch = sorted(self.pending.items())
        self.pending = {}
        groups: dict[str, list[tuple[int, list[int]]]] = {}
        settings: dict[str, dict[str, Any]] = {}
        for slot, (ids, kwargs) in batch:
            key = repr(sorted(kwargs.items(), key=lambda kv: kv[0]))
            groups.setdefault(key, []).append((slot, ids))
            settings[key] = kwargs
        for key, members in groups.items():
            try:
                self.results.update(self._generate(members, settings[key]))
            except BaseException as error:  # every waiting rollout must wake up and see it
                self.results.update({slot: error for slot, _ in members})
        self.cond.notify_all()

    def _generate(self, members: list[tuple[int, list[int]]], kwargs: dict[str, Any]) -> dict[int, Any]:
        device = self.model.device
        if self.kv is not None:
            out, width = self.kv.generate([slot for slot, _ in members], [ids for _, ids in members], **kwargs)
        else:
            width = max(len(ids) for _, ids in members)
            input_ids = torch.tensor([[self.pad_token_id] * (width - len(ids)) + ids for _, ids in members],
                                     device=device)
            attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in members],
                                     device=device)
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        results = {}
        for row, (slot, ids) in enumerate(members):
            prompt = torch.tensor([ids], device=device)
            sequences = torch.cat([prompt, out.sequences[row:row + 1, width:]], dim=1)
            logits = tuple(step[row:row + 1] for step in out.logits) if out.logits is not None else None
            results[slot] = SimpleNamespace(sequences=sequences, logits=logits)
        return results


def run_rollouts(graph: Any, references: Sequence[RewardReference], model: Any, tokenizer: Any,
                 config: TrainConfig, environment: EnvironmentFactory | None = None, reuse_kv: bool = True,
                 **student: Any) -> list[Rollout]:
    """One rollout of ``graph`` per reference, with the student (``model``, sampling at ``config.temperature``)
    swapped in; in reference order. A rollout cut off by ``config.max_turns``, or with a turn that hit
    ``config.max_new_tokens`` before its end token, has ``finished=False``. ``reuse_kv=False`` turns off the KV
    reuse across turns (see `BatchedGenerator`).

    With ``environment``, each rollout runs the graph of its own `Environment` (``graph`` is not used), so
    concurrent rollouts never share state. Each rollout's ``correct`` is the task verifier's verdict, taken with
    that run's ``Environment.state`` before the environment is closed."""
    references = list(references)
    generator = BatchedGenerator(model, tokenizer.pad_token_id, len(references), config.max_turns, reuse_kv)
    chat = StudentChatModel(
        model=generator, tokenizer=tokenizer, record_tokens=True, do_sample=True, prefix_cache=None,
        temperature=config.temperature, max_new_tokens=config.max_new_tokens, **student,
    )
    if environment is None:
        shared = swap_model(graph, chat)
        environment = lambda: Environment(shared)  # noqa: E731
    else:
        environment = map_agent(environment, lambda agent: swap_model(agent, chat))
    # Backstop for graphs that loop without calling the model; the turn limit itself is counted in the generator.
    recursion_limit = 4 * config.max_turns + 4

    def one(slot: int, reference: RewardReference) -> Rollout:
        _SLOT.set(slot)
        recorder = TokenRecorder()
        state: dict[str, Any] = {"messages": []}
        cut_by = None
        try:
            env = environment()
        except BaseException:
            generator.finish()
            raise
        with env:
            try:
                for state in env.agent.stream(
                    {"messages": [{"role": "user", "content": reference.task_input}]},
                    config={"callbacks": [recorder], "recursion_limit": recursion_limit}, stream_mode="values",
                ):
                    pass
            except (TurnLimitExceeded, GraphRecursionError):
                cut_by = "turn_limit"
            finally:
                generator.finish()
            # A turn that ran out of new tokens before its end token is cut off, as in the reference code (no EOS).
            if any(not r.generated_ids or r.generated_ids[-1] not in r.end_ids for r in recorder.records):
                cut_by = "token_budget"
            rollout = rollout_from_run(state, recorder.records, task_id=reference.task_id, finished=cut_by is None,
                                       cut_by=cut_by, strict=False)
            return rollout.model_copy(update={"correct": reference.is_correct(rollout.final_answer, env.state),
                                              "prefill_fallbacks": generator.prefill_fallbacks[slot]})

    with ThreadPoolExecutor(max_workers=max(1, len(references))) as pool:
        futures = [pool.submit(contextvars.copy_context().run, one, i, ref) for i, ref in enumerate(references)]
        return [future.result() for future in futures]


def graph_rollout_fn(graph: Any, environment: EnvironmentFactory | None = None, reuse_kv: bool = True,
                     **student: Any) -> RolloutFn:
    """The ``rollout_fn`` for `mentor_agents.training`: runs the compiled ``graph`` (or, with ``environment``, a
    fresh graph of its own per rollout) with the student swapped in (see `run_rollouts`). ``student`` sets further
    `StudentChatModel` fields (e.g. ``top_p``)."""

    def rollout_fn(references: list[RewardReference], model: Any, tokenizer: Any,
                   config: TrainConfig) -> list[Rollout]:
        return run_rollouts(graph, references, model, tokenizer, config, environment, reuse_kv, **student)

    return rollout_fn
