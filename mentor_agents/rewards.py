"""The MENTOR teacher-guided reward (arXiv 2510.18383), its ablations, and opt-in extensions.

Paper-exact, following the reference code (choics2623/MENTOR-RL, ``reward_score/mentor*.py``). With C = the answer
is correct, T = the teacher's tool-name set, S = the student's tool names that are among the agent's tools, H = the
student named no tool outside the agent's tools (calls the parser rejected as unknown count here; calls whose text
did not parse count nowhere):

- 0.0 if the rollout did not finish (cut off by the token budget or the turn limit);
- 0.1 if it has no final answer; for ``mentor``, ``overlap`` and ``f1`` also when the teacher used no tools;
- otherwise, by name:

  ==========  ================================================  =====
  name        value                                             max
  ==========  ================================================  =====
  mentor      0.7C + 0.3·[S = T ≠ ∅]·(C + 0.2(1-C)) + 0.1H      1.1
  sparse      1.0 if C else 0.1                                 1.0
  overlap     0.7C + 0.3·[S ∩ T ≠ ∅]·(C + 0.2(1-C))             1.0
  no_match    0.7C + 0.1H                                       0.8
  f1          0.7C + 0.3·F1(S, T)·(C + 0.2(1-C)) + 0.1H         1.1
  ==========  ================================================  =====

One difference from the reference: the final answer is the text of the last assistant message, not a ``\\boxed{}``.
Every function is pure: ``(rollout, reference) -> RewardResult``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

from mentor_agents.errors import InvalidInputError
from mentor_agents.references import RewardReference
from mentor_agents.rollouts import Rollout
from mentor_agents.messages import ToolCall

RewardName = Literal["mentor", "sparse", "overlap", "no_match", "f1"]
REWARD_NAMES: tuple[str, ...] = ("mentor", "sparse", "overlap", "no_match", "f1")
TEACHER_TOOL_GATED: tuple[str, ...] = ("mentor", "overlap", "f1")
"""The variants that give 0.1 when the teacher used no tools (as in the reference code)."""

UNFINISHED = 0.0
NO_ANSWER = 0.1


@dataclass(frozen=True)
class RewardResult:
    value: float
    breakdown: dict[str, float]
    reason: str = ""
    """Why the rollout got this value, in a few words: a gate (``cut off by turn limit``, ``no final answer``,
    ``teacher used no tools``) or the terms (``correct; tool set matches teacher; called unknown tool python``)."""


def is_correct(
    rollout: Rollout, reference: RewardReference, verify: Callable[[str, Any], bool] | None = None
) -> bool:
    """The verdict the runner took with the run's state (``rollout.correct``) when there is one; else ``verify``,
    else the reference's verifier (`RewardReference.is_correct`), against the ground truth or, without one, the
    teacher's verified answer."""
    if rollout.correct is not None:
        return rollout.correct
    if verify is None:
        return reference.is_correct(rollout.final_answer)
    target = reference.ground_truth if reference.ground_truth is not None else reference.teacher_answer
    return target is not None and bool(verify(rollout.final_answer or "", target))


def set_f1(student: set[str], teacher: set[str]) -> float:
    overlap = len(student & teacher)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(student), overlap / len(teacher)
    return 2 * precision * recall / (precision + recall)


def agent_calls(rollout: Rollout, reference: RewardReference) -> list[ToolCall]:
    """The student's calls to tools the agent offers, in order: what S and every extension term are computed from.

    When the reference lists no tools, every parsed call counts (the parser already kept out unknown names).
    """
    if not reference.tools:
        return list(rollout.tool_calls)
    offered = reference.tool_names
    return [call for call in rollout.tool_calls if call.name in offered]


def unknown_tools(rollout: Rollout, reference: RewardReference) -> list[str]:
    """The tool names the student called that the agent does not offer, sorted (H = this is empty).

    Calls the parser rejected as unknown count; malformed calls (no name could be read) do not.
    """
    rejected = {call.name for call in rollout.invalid_calls if call.kind == "unknown_tool" and call.name}
    if not reference.tools:
        return sorted(rejected)
    offered = reference.tool_names
    return sorted((rollout.tool_names | rejected) - offered)


def gate(name: RewardName, rollout: Rollout, reference: RewardReference) -> RewardResult | None:
    """The 0.0 / 0.1 result when a gate fires, else None."""
    if not rollout.finished:
        cut = f"cut off by {rollout.cut_by.replace('_', ' ')}" if rollout.cut_by else "did not finish"
        return RewardResult(UNFINISHED, {"gate": UNFINISHED}, cut)
    if not (rollout.final_answer or "").strip():
        return RewardResult(NO_ANSWER, {"gate": NO_ANSWER}, "no final answer")
    if name in TEACHER_TOOL_GATED and not reference.teacher_tools:
        return RewardResult(NO_ANSWER, {"gate": NO_ANSWER}, "teacher used no tools")
    return None


def score(
    name: RewardName,
    rollout: Rollout,
    reference: RewardReference,
    verify: Callable[[str, Any], bool] | None = None,
) -> RewardResult:
    """The reward ``name`` (see the module docstring) of one rollout against its reference."""
    if name not in REWARD_NAMES:
        raise InvalidInputError(f"unknown reward {name!r}; choose one of {', '.join(REWARD_NAMES)}")
    gated = gate(name, rollout, reference)
    if gated is not None:
        return gated

    correct = float(is_correct(rollout, reference, verify))
    reasons = ["correct" if correct else "wrong answer"]
    if name == "sparse":
        return RewardResult(1.0 if correct else 0.1, {"correct": correct}, reasons[0])
    student = {call.name for call in agent_calls(rollout, reference)}
    teacher = set(reference.teacher_tools)
    unknown = unknown_tools(rollout, reference)
    no_hallucination = float(not unknown)

    if name == "mentor":
        match = float(bool(student) and student == teacher)
    elif name == "overlap":
        match = float(bool(student & teacher))
    elif name == "f1":
        match = set_f1(student, teacher)
    else:
        match = 0.0
    if name != "no_match":
        reasons.append(match_reason(name, match, student, teacher))
    if unknown and name != "overlap":
        reasons.append("called unknown tool " + ", ".join(unknown))

    breakdown = {"correct": correct, "tool_match": match, "no_hallucination": no_hallucination}
    value = 0.7 * correct + 0.3 * match * (correct + 0.2 * (1 - correct))
    if name != "overlap":
        value += 0.1 * no_hallucination
    return RewardResult(round(value, 10), breakdown, "; ".join(reasons))


def match_reason(name: RewardName, match: float, student: set[str], teacher: set[str]) -> str:
    if not student:
        return "student used no tools"
    if name == "f1" and 0 < match < 1:
        return f"tool set F1 {match:.2f} with teacher"
    if match:
        return "tool set matches teacher" if name != "overlap" or student == teacher else "tool set overlaps teacher"
    shown = ", ".join(sorted(student)) + " vs teacher " + ", ".join(sorted(teacher))
    return f"tool set differs from teacher ({shown})"


def argument_match(rollout: Rollout, reference: RewardReference) -> float:
    """Share of teacher calls that the student made with the same name and equal arguments (numbers compared
    with a relative tolerance of 1e-6)."""
    if not reference.teacher_calls:
        return 0.0
    remaining = agent_calls(rollout, reference)
    matched = 0
    for target in reference.teacher_calls:
        for i, call in enumerate(remaining):
            if call.name == target.name and same_value(call.args, target.args):
                matched += 1
                del remaining[i]
                break
    return matched / len(reference.teacher_calls)


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def order_match(rollout: Rollout, reference: RewardReference) -> float:
    """Longest common subsequence of the student's and teacher's call-name sequences, over the longer one."""
    student = [call.name for call in agent_calls(rollout, reference)]
    teacher = [call.name for call in reference.teacher_calls]
    if not student or not teacher:
        return 0.0
    previous = [0] * (len(teacher) + 1)
    for s in student:
        current = [0]
        for j, t in enumerate(teacher):
            current.append(previous[j] + 1 if s == t else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1] / max(len(student), len(teacher))


def efficiency(rollout: Rollout, reference: RewardReference) -> float:
    """1 when the student used no more calls than the teacher, falling as teacher calls / student calls."""
    used = len(agent_calls(rollout, reference))
    if used == 0:
        return 0.0
    return min(1.0, len(reference.teacher_calls) / used)


@dataclass(frozen=True)
class Reward:
    """The reward ``name`` (MENTOR or one of its ablations; ``sparse`` reads only correctness, not the teacher) plus
    opt-in extension terms and reward-hacking guards.

    The defaults are the paper-exact MENTOR reward. Each ``*_weight`` adds that term (a value in [0, 1], times the
    weight) once the gates pass. ``max_calls_factor`` caps the reward at 0.1 when the student made more than
    ``max_calls_factor`` times as many calls as the teacher (tool spam). ``min_answer_chars`` treats shorter answers
    as missing.
    """

    name: RewardName = "mentor"
    argument_weight: float = 0.0
    order_weight: float = 0.0
    efficiency_weight: float = 0.0
    max_calls_factor: float | None = None
    min_answer_chars: int = 1
    verify: Callable[[str, Any], bool] | None = None

    def __call__(self, rollout: Rollout, reference: RewardReference) -> RewardResult:
        answer = (rollout.final_answer or "").strip()
        if rollout.finished and len(answer) < self.min_answer_chars:
            why = f"answer shorter than {self.min_answer_chars} characters" if answer else "no final answer"
            return RewardResult(NO_ANSWER, {"gate": NO_ANSWER, "guard_short_answer": 1.0}, why)
        result = score(self.name, rollout, reference, self.verify)
        if "gate" in result.breakdown:
            return result
        value, breakdown, reason = result.value, dict(result.breakdown), result.reason
        for weight, term in (
            (self.argument_weight, argument_match),
            (self.order_weight, order_match),
            (self.efficiency_weight, efficiency),
        ):
            if weight:
                breakdown[term.__name__] = term(rollout, reference)
                value += weight * breakdown[term.__name__]
        if self.max_calls_factor is not None:
            used = len(agent_calls(rollout, reference))
            spam = used > self.max_calls_factor * max(1, len(reference.teacher_calls))
            breakdown["guard_tool_spam"] = float(spam)
            if spam:
                value = min(value, NO_ANSWER)
                reason += f"; tool spam ({used} calls, teacher {len(reference.teacher_calls)})"
        return RewardResult(round(value, 10), breakdown, reason)

    @property
    def max_value(self) -> float:
        base = {"mentor": 1.1, "sparse": 1.0, "overlap": 1.0, "no_match": 0.8, "f1": 1.1}[self.name]
        return base + self.argument_weight + self.order_weight + self.efficiency_weight
