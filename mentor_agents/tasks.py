"""Tasks and verifiers: what the agent is asked, and how an answer is judged."""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict

from mentor_agents.errors import InvalidInputError
from mentor_agents.files import write_text_atomic

Verdict = Literal["correct", "wrong", "unknown"]

NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")


class ExactMatch(BaseModel):
    """Correct when the answer, stripped and case-folded, equals the ground truth."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["exact"] = "exact"

    def __call__(self, answer: str, ground_truth: Any) -> bool:
        return answer.strip().casefold() == str(ground_truth).strip().casefold()


class NumericMatch(BaseModel):
    """Correct when the last number in the answer is within ``abs_tol`` or ``rel_tol`` of the ground truth."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["numeric"] = "numeric"
    abs_tol: float = 1e-6
    rel_tol: float = 1e-6

    def __call__(self, answer: str, ground_truth: Any) -> bool:
        value = last_number(answer)
        target = ground_truth if isinstance(ground_truth, (int, float)) else last_number(str(ground_truth))
        return value is not None and target is not None and math.isclose(
            value, float(target), abs_tol=self.abs_tol, rel_tol=self.rel_tol
        )


def last_number(text: str) -> float | None:
    """The last number written in ``text`` ("... is 1,234.5." -> 1234.5), or None."""
    found = NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


Verifier = Union[ExactMatch, NumericMatch, Callable[..., bool]]
"""Exact match, numeric tolerance, or any ``(answer, ground_truth) -> bool`` callable. A callable that declares a
``state`` parameter is called as ``verifier(answer, ground_truth, state=...)`` with the run's final state (the
``state`` of its `mentor_agents.environment.Environment`), e.g. to check what the agent wrote to a database."""


def check(verifier: Verifier, answer: str, ground_truth: Any, state: Any = None) -> bool:
    """``verifier``'s judgement of ``answer``, with the run's ``state`` when the verifier declares a ``state``
    parameter."""
    if not isinstance(verifier, (ExactMatch, NumericMatch)) and "state" in inspect.signature(verifier).parameters:
        return bool(verifier(answer, ground_truth, state=state))
    return bool(verifier(answer, ground_truth))


def is_custom(verifier: Any) -> bool:
    """True for a callable verifier, which cannot be stored (files say ``"custom"``)."""
    return verifier is not None and not isinstance(verifier, (ExactMatch, NumericMatch))


class Task(BaseModel):
    """One request to the agent, with an optional ground truth and the verifier that checks answers against it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    id: str
    input: str
    ground_truth: Any = None
    verifier: Verifier | None = None
    metadata: dict[str, Any] = {}

    def verdict(self, answer: str | None, state: Any = None) -> Verdict:
        """``correct`` or ``wrong`` when the task can be checked, else ``unknown``; ``state`` is the run's final
        state, for a verifier that takes one."""
        if self.verifier is None or self.ground_truth is None:
            return "unknown"
        if answer is None or not answer.strip():
            return "wrong"
        return "correct" if check(self.verifier, answer, self.ground_truth, state) else "wrong"


def task_to_dict(task: Task) -> dict[str, Any]:
    """A JSON-ready task; a callable verifier is written as ``"custom"`` (it cannot be stored)."""
    verifier: Any = task.verifier
    if isinstance(verifier, (ExactMatch, NumericMatch)):
        verifier = verifier.model_dump()
    elif is_custom(verifier):
        verifier = "custom"
    return {"id": task.id, "input": task.input, "ground_truth": task.ground_truth, "verifier": verifier,
            "metadata": task.metadata}


def task_from_dict(data: dict[str, Any], custom: dict[str, Verifier] | None = None) -> Task:
    """The inverse of `task_to_dict`; ``custom`` gives back callable verifiers by task id. A task stored with a
    ``"custom"`` verifier that ``custom`` does not give back is an error: it must not lose its verifier."""
    data = dict(data)
    verifier = data.pop("verifier", None)
    if verifier == "custom":
        if data.get("id") not in (custom or {}):
            raise InvalidInputError(f"task {data.get('id')!r} has a custom (callable) verifier, which cannot be "
                                    "stored; pass the task itself (with its verifier) again")
        verifier = custom[data["id"]]
    elif isinstance(verifier, dict):
        verifier = NumericMatch(**verifier) if verifier.get("kind") == "numeric" else ExactMatch(**verifier)
    return Task(**data, verifier=verifier)


def read_tasks(path: str | Path) -> list[Task]:
    """Tasks from a JSONL file, one ``{"id", "input", "ground_truth"?, "verifier"?: {"kind": "exact"|"numeric",
    ...}}`` object per line; a bad line raises an error naming the file and line."""
    tasks = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            tasks.append(task_from_dict(json.loads(line)))
        except (ValueError, TypeError, AttributeError) as e:
            raise InvalidInputError(f"{path}:{number}: not a task ({e})") from None
    return tasks


def write_tasks(tasks: list[Task], path: str | Path) -> None:
    """Write tasks as JSONL for `read_tasks`; a callable verifier cannot be written and is kept as ``"custom"``."""
    write_text_atomic(path, "".join(json.dumps(task_to_dict(task)) + "\n" for task in tasks))
