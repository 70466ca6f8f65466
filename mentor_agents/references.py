"""Reward references: what the teacher did on each task, in the form the reward reads."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_serializer, field_validator

from mentor_agents.errors import InvalidInputError
from mentor_agents.messages import tool_names
from mentor_agents.tasks import ExactMatch, NumericMatch, Verdict, Verifier, check, is_custom, last_number
from mentor_agents.traces import SCHEMA_VERSION, Trace, read_jsonl, write_jsonl_atomic


class CallReference(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    args: dict[str, Any]


class RewardReference(BaseModel):
    """The teacher's solution of one task: its tool-name set, its ordered calls, its answer and the ground truth."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    task_id: str
    task_input: str
    system_prompt: str | None = None
    tools: list[dict[str, Any]] = []
    teacher_tools: list[str]
    """Sorted, de-duplicated names of the tools the teacher called."""
    teacher_calls: list[CallReference]
    teacher_answer: str | None
    ground_truth: Any = None
    verifier: Annotated[ExactMatch | NumericMatch, Field(discriminator="kind")] | Callable[..., bool] | None = None
    """The task's verifier: built-in, or the task's own callable for this run (stored as ``"custom"``; loading it
    needs the callable back, see `load_references`)."""
    verdict: Verdict = "unknown"

    @field_validator("verifier", mode="before")
    @classmethod
    def _attach_custom(cls, value: Any, info: ValidationInfo) -> Any:
        if value != "custom":
            return value
        task_id = info.data.get("task_id")
        verifiers = (info.context or {}).get("verifiers") or {}
        if task_id not in verifiers:
            raise InvalidInputError(
                f"the reference of task {task_id!r} was judged by a custom (callable) verifier, which cannot be "
                "stored; pass it back (load_references(path, verifiers={task_id: fn}), or the task itself to "
                "distill), or start over with a new run_dir or resume=False")
        return verifiers[task_id]

    @field_serializer("verifier")
    def _store_verifier(self, verifier: Any) -> Any:
        return "custom" if is_custom(verifier) else verifier.model_dump() if verifier is not None else None

    @property
    def tool_names(self) -> set[str]:
        """Names of every tool offered to the agent."""
        return tool_names(self.tools)

    def is_correct(self, answer: str | None, state: Any = None) -> bool:
        """Whether ``answer`` is right: the task's verifier against the ground truth (the teacher's verified answer
        when there is none), given the run's final ``state`` when the verifier takes one. Without a verifier,
        the answer must agree with that target (`answer_key`)."""
        target = self.ground_truth if self.ground_truth is not None else self.teacher_answer
        if target is None or answer is None or not answer.strip():
            return False
        if self.verifier is None:
            return answer_key(answer) == answer_key(str(target))
        return check(self.verifier, answer, target, state)

    @classmethod
    def from_trace(cls, trace: Trace, verifier: Verifier | None = None) -> RewardReference:
        """The reference of ``trace``; ``verifier`` is its task's callable verifier, needed when the trace says
        ``"custom"``."""
        calls = [CallReference(name=call.name, args=call.args) for call in trace.tool_calls]
        if trace.verifier == "custom" and verifier is None:
            raise InvalidInputError(f"task {trace.task_id!r} has a custom (callable) verifier, which traces cannot "
                                    "store; pass it: build_references(traces, verifiers={task_id: fn})")
        return cls(
            task_id=trace.task_id,
            task_input=trace.task_input,
            system_prompt=trace.system_prompt,
            tools=trace.tools,
            teacher_tools=sorted({call.name for call in calls}),
            teacher_calls=calls,
            teacher_answer=trace.final_answer,
            ground_truth=trace.ground_truth,
            verifier=verifier if trace.verifier == "custom" else trace.verifier,
            verdict=trace.verdict,
        )


def build_references(traces: Iterable[Trace], keep: Iterable[Verdict] = ("correct",),
                     verifiers: Mapping[str, Verifier] | None = None) -> list[RewardReference]:
    """One reference per task, from the first trace whose verdict is in ``keep`` and that did not fail.

    Pass ``keep=("correct", "unknown")`` for tasks that have no verifier. ``verifiers`` gives the callable
    verifiers of tasks whose traces say ``"custom"``, by task id; the references keep them for the run.
    """
    kept = set(keep)
    references: dict[str, RewardReference] = {}
    for trace in traces:
        if trace.error is None and trace.verdict in kept and trace.task_id not in references:
            references[trace.task_id] = RewardReference.from_trace(trace, (verifiers or {}).get(trace.task_id))
    return list(references.values())


def answer_key(answer: str | None) -> str | None:
    """What two answers must share to agree: the last number when there is one, else the case-folded text."""
    if answer is None or not answer.strip():
        return None
    number = last_number(answer)
    return f"{number:.6g}" if number is not None else " ".join(answer.casefold().split())


def self_consistency(traces: Iterable[Trace], min_agreement: float = 0.5) -> list[Trace]:
    """Verdicts for tasks without a verifier, from agreement among several teacher samples of each task.

    Traces whose verdict is ``unknown`` are grouped by task. When more than ``min_agreement`` of a task's completed
    samples share one answer, those samples become ``correct`` (with that answer as ground truth, checked by number
    when it has one, else by exact text) and the others
    ``wrong``; otherwise they stay ``unknown``. Traces that already have a verdict are returned unchanged.
    """
    traces = list(traces)
    groups: dict[str, list[int]] = {}
    for i, trace in enumerate(traces):
        if trace.verdict == "unknown" and trace.error is None:
            groups.setdefault(trace.task_id, []).append(i)
    out = list(traces)
    for indices in groups.values():
        keys = [answer_key(traces[i].final_answer) for i in indices]
        votes = Counter(key for key in keys if key is not None)
        if not votes:
            continue
        winner, count = votes.most_common(1)[0]
        if count / len(indices) <= min_agreement:
            continue
        majority_answer = next(traces[i].final_answer for i, key in zip(indices, keys) if key == winner)
        numeric = last_number(majority_answer or "") is not None
        for i, key in zip(indices, keys):
            out[i] = traces[i].model_copy(update={
                "verdict": "correct" if key == winner else "wrong",
                "ground_truth": majority_answer,
                "verifier": NumericMatch() if numeric else ExactMatch(),
                "metadata": {**traces[i].metadata, "agreement": count / len(indices)},
            })
    return out


def save_references(references: list[RewardReference], path: str | Path) -> None:
    write_jsonl_atomic(Path(path), references)


def load_references(path: str | Path, skip_invalid: bool = False,
                    verifiers: Mapping[str, Verifier] | None = None) -> list[RewardReference]:
    """References from a JSONL file; an invalid line raises `RecordFileError` naming the file, line and field.
    ``verifiers`` gives back, by task id, the callable verifiers stored as ``"custom"``; a reference whose callable
    is not given back is an error, never a silent exact match."""
    references, _ = read_jsonl(Path(path), RewardReference, skip_invalid, context={"verifiers": verifiers or {}})
    return references


@dataclass
class TeacherSummary:
    traces: int
    failed: int
    verdicts: dict[str, int]
    success_rate: float | None
    """Correct over checked (correct + wrong) traces; None when nothing could be checked."""
    calls_per_task: float
    tool_counts: dict[str, int] = field(default_factory=dict)
    parsed_from_text: int = 0
    mean_duration_s: float = 0.0

    def __str__(self) -> str:
        rate = "n/a" if self.success_rate is None else f"{self.success_rate:.1%}"
        lines = [
            "| metric | value |",
            "|---|---|",
            f"| traces | {self.traces} |",
            f"| failed runs | {self.failed} |",
            "| verdicts | " + ", ".join(f"{k} {v}" for k, v in sorted(self.verdicts.items())) + " |",
            f"| teacher success rate | {rate} |",
            f"| tool calls per task | {self.calls_per_task:.2f} |",
            f"| calls parsed from text | {self.parsed_from_text} |",
            f"| mean run time | {self.mean_duration_s:.2f} s |",
            "",
            "| tool | calls |",
            "|---|---|",
        ]
        lines += [f"| {name} | {count} |" for name, count in sorted(self.tool_counts.items(), key=lambda kv: -kv[1])]
        return "\n".join(lines)


def summarize(traces: Iterable[Trace]) -> TeacherSummary:
    """The teacher's success rate, calls per task and tool distribution over ``traces``."""
    traces = list(traces)
    verdicts = Counter(trace.verdict for trace in traces if trace.error is None)
    checked = verdicts["correct"] + verdicts["wrong"]
    completed = [trace for trace in traces if trace.error is None]
    calls = [call for trace in completed for call in trace.tool_calls]
    return TeacherSummary(
        traces=len(traces),
        failed=sum(trace.error is not None for trace in traces),
        verdicts=dict(verdicts),
        success_rate=verdicts["correct"] / checked if checked else None,
        calls_per_task=len(calls) / len(completed) if completed else 0.0,
        tool_counts=dict(Counter(call.name for call in calls)),
        parsed_from_text=sum(call.parsed_from_text for call in calls),
        mean_duration_s=sum(t.duration_s for t in completed) / len(completed) if completed else 0.0,
    )
