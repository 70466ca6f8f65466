"""The MENTOR reward reproduces every value reachable in the reference code, and its ablations and extensions."""

import pytest

from mentor_agents.references import CallReference, RewardReference
from mentor_agents.rewards import (
    REWARD_NAMES,
    Reward,
    argument_match,
    efficiency,
    order_match,
    score,
    set_f1,
)
from mentor_agents.rollouts import InvalidToolCall, Rollout
from mentor_agents.tasks import NumericMatch
from mentor_agents.messages import ToolCall

TOOL_NAMES = ["add", "multiply", "divide", "sqrt"]
SCHEMAS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in TOOL_NAMES]


def reference(teacher=("add", "multiply"), calls=None, ground_truth=42):
    calls = calls or [CallReference(name=n, args={"a": 1, "b": 2}) for n in teacher]
    return RewardReference(
        task_id="t", task_input="q", tools=SCHEMAS, teacher_tools=sorted(set(teacher)), teacher_calls=calls,
        teacher_answer="Answer: 42", ground_truth=ground_truth, verifier=NumericMatch(),
    )


def rollout(names=(), answer="Answer: 42", finished=True, args=None, invalid=()):
    calls = [ToolCall(id=f"c{i}", name=n, args=args or {"a": 1, "b": 2}) for i, n in enumerate(names)]
    return Rollout(tool_calls=calls, final_answer=answer, finished=finished, invalid_calls=list(invalid))


UNKNOWN = InvalidToolCall(name="python", error="unknown tool 'python'", kind="unknown_tool")
MALFORMED = InvalidToolCall(error="Expecting value at line 1 column 2", kind="malformed")


def test_mentor_reachable_values():
    def mentor(names, answer):
        return score("mentor", rollout(names, answer), reference()).value

    assert mentor(("add", "multiply"), "Answer: 42") == 1.1  # correct, S == T, no unknown tool
    assert mentor(("add",), "Answer: 42") == 0.8  # correct, S != T
    assert mentor((), "Answer: 42") == 0.8  # an empty S never matches
    assert mentor(("add", "hack"), "Answer: 42") == 0.7  # correct, S != T, unknown tool
    assert mentor(("add", "multiply"), "Answer: 41") == 0.16  # wrong, S == T
    assert mentor(("add",), "Answer: 41") == 0.1  # wrong, S != T
    assert mentor(("hack",), "Answer: 41") == 0.0  # wrong, unknown tool


def test_mentor_match_with_hallucination_values():
    # 1.0 and 0.06 are S == T with H == 0: S holds only the agent's tools, so a call to an unknown tool on top of
    # the teacher's set still matches and only loses the 0.1 (as in the reference code).
    ref = reference(teacher=("add",))
    assert score("mentor", rollout(("add", "hack")), ref).value == 1.0
    assert score("mentor", rollout(("add", "hack"), "Answer: 0"), ref).value == 0.06
    assert score("f1", rollout(("add", "hack")), ref).value == 1.0
    # A teacher tool the agent lacks can never be in S, so S == T cannot hold.
    odd = reference(teacher=("add", "hack"))
    assert score("mentor", rollout(("add", "hack")), odd).value == 0.7
    assert score("mentor", rollout(("add", "hack"), "Answer: 0"), odd).value == 0.0


def test_every_reachable_value_is_hit():
    seen = set()
    for names in [(), ("add",), ("add", "multiply"), ("hack",), ("add", "hack"), ("add", "multiply", "hack")]:
        for answer in ["Answer: 42", "Answer: 41"]:
            seen.add(score("mentor", rollout(names, answer), reference()).value)
    assert {0.7, 0.8, 1.0, 1.1} <= seen  # correct
    assert {0.0, 0.06, 0.1, 0.16} <= seen  # wrong
    assert seen <= {0.0, 0.06, 0.1, 0.16, 0.7, 0.8, 1.0, 1.1}


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_gates(name):
    assert score(name, rollout(("add", "multiply"), finished=False), reference()).value == 0.0
    assert score(name, rollout(("add", "multiply"), answer=None), reference()).value == 0.1
    assert score(name, rollout(("add", "multiply"), answer="   "), reference()).value == 0.1
    no_teacher_tools = reference().model_copy(update={"teacher_tools": [], "teacher_calls": []})
    # "The teacher used no tools" gates only the variants that match against the teacher's tools.
    ungated = {"sparse": 1.0, "no_match": 0.8}
    assert score(name, rollout(("add",)), no_teacher_tools).value == ungated.get(name, 0.1)
    assert score(name, rollout(()), no_teacher_tools).value == ungated.get(name, 0.1)


def test_ablations():
    ref = reference()
    assert score("sparse", rollout(("add",)), ref).value == 1.0
    assert score("sparse", rollout(("add",), "Answer: 1"), ref).value == 0.1
    # overlap: S∩T non-empty is enough, no H term
    assert score("overlap", rollout(("add", "hack")), ref).value == 1.0
    assert score("overlap", rollout(("add",), "Answer: 1"), ref).value == 0.06
    assert score("overlap", rollout(("divide",)), ref).value == 0.7
    # no_match: 0.7C + 0.1H
    assert score("no_match", rollout(("add", "multiply")), ref).value == 0.8
    assert score("no_match", rollout(("hack",)), ref).value == 0.7
    assert score("no_match", rollout(("add",), "Answer: 1"), ref).value == 0.1
    # f1: F1({add}, {add, multiply}) = 2/3
    assert score("f1", rollout(("add",)), ref).value == pytest.approx(0.7 + 0.3 * 2 / 3 + 0.1)
    assert score("f1", rollout(("add",), "Answer: 1"), ref).value == pytest.approx(0.3 * 2 / 3 * 0.2 + 0.1)
    assert set_f1(set(), {"a"}) == 0.0
    with pytest.raises(ValueError, match="unknown reward 'dense'"):
        score("dense", rollout(), ref)


def test_breakdown_names_the_terms():
    result = score("mentor", rollout(("add",)), reference())
    assert result.breakdown == {"correct": 1.0, "tool_match": 0.0, "no_hallucination": 1.0}
    assert score("mentor", rollout(finished=False), reference()).breakdown == {"gate": 0.0}


def test_correctness_falls_back_to_teacher_answer_and_custom_verifier():
    ref = reference(ground_truth=None)
    assert score("sparse", rollout(answer="it is 42"), ref).value == 1.0
    exact = Reward(name="sparse", verify=lambda answer, truth: answer == truth)
    assert exact(rollout(answer="it is 42"), ref).value == 0.1
    assert exact(rollout(answer="Answer: 42"), ref).value == 1.0


def test_argument_order_efficiency_terms():
    calls = [CallReference(name="add", args={"a": 1, "b": 2}), CallReference(name="multiply", args={"a": 3, "b": 4})]
    ref = reference(calls=calls)
    good = Rollout(
        tool_calls=[ToolCall(id="1", name="add", args={"a": 1.0, "b": 2}), ToolCall(id="2", name="multiply", args={"a": 3, "b": 4})],
        final_answer="Answer: 42",
    )
    assert argument_match(good, ref) == 1.0
    half = good.model_copy(update={"tool_calls": [good.tool_calls[0], ToolCall(id="2", name="multiply", args={"a": 3, "b": 5})]})
    assert argument_match(half, ref) == 0.5
    reversed_ = good.model_copy(update={"tool_calls": list(reversed(good.tool_calls))})
    assert order_match(good, ref) == 1.0
    assert order_match(reversed_, ref) == 0.5
    spam = good.model_copy(update={"tool_calls": good.tool_calls * 4})
    assert efficiency(good, ref) == 1.0
    assert efficiency(spam, ref) == 0.25
    assert efficiency(Rollout(final_answer="x"), ref) == 0.0

    extended = Reward(argument_weight=0.5, order_weight=0.25, efficiency_weight=0.25)
    assert extended(good, ref).value == pytest.approx(1.1 + 1.0)
    assert extended(reversed_, ref).value == pytest.approx(1.1 + 0.5 + 0.125 + 0.25)
    assert extended.max_value == pytest.approx(2.1)


def test_hack_guards():
    ref = reference()
    guarded = Reward(max_calls_factor=2.0, min_answer_chars=3)
    spam = rollout(("add", "multiply") * 3)
    assert Reward()(spam, ref).value == 1.1
    result = guarded(spam, ref)
    assert result.value == 0.1 and result.breakdown["guard_tool_spam"] == 1.0
    assert guarded(rollout(("add", "multiply")), ref).value == 1.1
    short = guarded(rollout(("add", "multiply"), answer="42"), ref)
    assert short.value == 0.1 and short.breakdown["guard_short_answer"] == 1.0


@pytest.mark.parametrize("name", ["mentor", "no_match", "f1"])
def test_calls_the_parser_rejected_as_unknown_cost_the_h_term_and_malformed_ones_nothing(name):
    ref = reference()
    full = score(name, rollout(("add", "multiply")), ref).value
    assert score(name, rollout(("add", "multiply"), invalid=[MALFORMED]), ref).value == full
    assert score(name, rollout(("add", "multiply"), invalid=[UNKNOWN]), ref).value == pytest.approx(full - 0.1)
    assert score(name, rollout(("add", "multiply"), invalid=[UNKNOWN]), ref).breakdown["no_hallucination"] == 0.0
    # the example: T = {sqrt}, the student calls only python (rejected), correct
    assert score("mentor", rollout((), invalid=[UNKNOWN]), reference(teacher=("sqrt",))).value == 0.7


def test_an_unknown_tool_the_parser_let_through_counts_like_a_rejected_one():
    ref = reference()
    through_parser = rollout(("add", "multiply"), invalid=[UNKNOWN])
    let_through = rollout(("add", "multiply", "python"))
    for name in REWARD_NAMES:
        assert score(name, let_through, ref) == score(name, through_parser, ref)


def test_reasons_say_which_gate_or_terms_decided():
    ref = reference()
    cut = rollout(("add",), finished=False).model_copy(update={"cut_by": "turn_limit"})
    assert score("mentor", cut, ref).reason == "cut off by turn limit"
    assert score("mentor", rollout(("add",), finished=False), ref).reason == "did not finish"
    assert score("sparse", rollout(answer=""), ref).reason == "no final answer"
    no_teacher_tools = ref.model_copy(update={"teacher_tools": [], "teacher_calls": []})
    assert score("f1", rollout(("add",)), no_teacher_tools).reason == "teacher used no tools"
    assert score("mentor", rollout(("add", "multiply")), ref).reason == "correct; tool set matches teacher"
    assert score("mentor", rollout(("add",), invalid=[UNKNOWN]), ref).reason == (
        "correct; tool set differs from teacher (add vs teacher add, multiply); called unknown tool python")
    assert score("overlap", rollout(("add",), "Answer: 1"), ref).reason == "wrong answer; tool set overlaps teacher"
    assert score("f1", rollout(("add",)), ref).reason == "correct; tool set F1 0.67 with teacher"
    assert score("no_match", rollout(()), ref).reason == "correct"
    assert score("mentor", rollout(()), ref).reason == "correct; student used no tools"
    spam = Reward(max_calls_factor=1.0)(rollout(("add", "multiply") * 2), ref)
    assert spam.reason == "correct; tool set matches teacher; tool spam (4 calls, teacher 2)"
    assert Reward(min_answer_chars=3)(rollout(answer="42"), ref).reason == "answer shorter than 3 characters"


def test_an_empty_answer_keeps_the_gate_whatever_the_verifier_says():
    for verdict in (None, True):
        reward = Reward(verify=lambda answer, truth: verdict)
        assert reward(rollout(("add", "multiply"), answer=""), reference()).value == 0.1


def test_extensions_and_guards_ignore_calls_to_tools_the_agent_lacks():
    calls = [CallReference(name="add", args={"a": 1, "b": 2}), CallReference(name="multiply", args={"a": 1, "b": 2})]
    ref = reference(calls=calls)
    clean = rollout(("add", "multiply"))
    with_unknown = rollout(("hack", "add", "hack", "multiply", "hack"))
    for term in (argument_match, order_match, efficiency):
        assert term(with_unknown, ref) == term(clean, ref) == 1.0, term.__name__
    guarded = Reward(argument_weight=1, order_weight=1, efficiency_weight=1, max_calls_factor=1.0)
    result = guarded(with_unknown, ref)
    assert result.breakdown["guard_tool_spam"] == 0.0
    assert result.value == pytest.approx(guarded(clean, ref).value - 0.1)  # only the H term sees the unknown calls


def test_a_cut_off_rollout_cannot_be_finished():
    with pytest.raises(ValueError, match="cut off by the token budget cannot be finished"):
        Rollout(finished=True, cut_by="token_budget")
