"""Tasks and verifiers: what the agent is asked, and how an answer is judged."""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict

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


Verifier = Union[ExactMatch, NumericMatch, Callable[[str, Any], bool]]
"""Exact match, numeric tolerance, or any ``(answer, ground_truth) -> bool`` callable."""


class Task(BaseModel):
    """One request to the agent, with an optional ground truth and the verifier that checks answers against it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    id: str
    input: str
    ground_truth: Any = None
    verifier: Verifier | None = None
    metadata: dict[str, Any] = {}

    def verdict(self, answer: str | None) -> Verdict:
        """``correct`` or ``wrong`` when the task can be checked, else ``unknown``."""
        if self.verifier is None or self.ground_truth is None:
            return "unknown"
        if answer is None or not answer.strip():
            return "wrong"
        return "correct" if self.verifier(answer, self.ground_truth) else "wrong"
