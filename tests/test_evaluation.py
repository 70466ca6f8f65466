"""Evaluation metrics on hand-built traces with known answers; table and plots."""

import pytest

from mentor_agents.evaluation import (bootstrap_ci, comparison_table, evaluate_traces, paired_bootstrap,
                                      plot_reward_curve, plot_success)
from mentor_agents.references import CallReference, RewardReference
from mentor_agents.messages import ToolCall
from mentor_agents.traces import ModelStep, Trace, Usage

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {}}} for n in ("add", "multiply")]


def run(task_id, calls, verdict, invalid=0, duration=1.0):
    steps = [
        ModelStep(
            input_messages=[],
            output={"role": "assistant", "invalid_tool_calls": [{"name": None, "error": "bad json"}] * invalid},
            tool_calls=[ToolCall(id=f"c{i}", name=n, args=a) for i, (n, a) in enumerate(calls)],
        ),
        ModelStep(input_messages=[], output={"role": "assistant", "content": "Answer: 1"}),
    ]
    return Trace(task_id=task_id, task_input="q", tools=TOOLS, steps=steps, verdict=verdict, duration_s=duration,
                 usage=Usage(input_tokens=10, output_tokens=5))


def reference(task_id, calls):
    return RewardReference(task_id=task_id, task_input="q", tools=TOOLS, teacher_tools=sorted({n for n, _ in calls}),
                           teacher_calls=[CallReference(name=n, args=a) for n, a in calls], teacher_answer="Answer: 1")


def test_metrics_on_known_traces():
    teacher = {
        "t1": reference("t1", [("add", {"a": 1, "b": 2}), ("multiply", {"a": 3, "b": 3})]),
        "t2": reference("t2", [("add", {"a": 5, "b": 5})]),
    }
    traces = [
        run("t1", [("add", {"a": 1, "b": 2}), ("multiply", {"a": 3, "b": 4})], "correct"),  # set match, 1/2 args
        run("t2", [("add", {"a": 5, "b": 5}), ("hack", {})], "wrong", invalid=1, duration=3.0),  # no set match
    ]
    m = evaluate_traces(traces, teacher)
    assert m.tasks == 2 and m.success == 0.5
    assert m.tool_set_match == 0.5
    assert m.argument_accuracy == pytest.approx(2 / 3)
    assert m.calls_per_task == 2.0
    # attempted = 4 parsed calls + 1 unparsed; invalid = 1 unparsed + 1 unknown tool
    assert m.invalid_call_rate == pytest.approx(2 / 5)
    assert m.turns_per_task == 2.0 and m.latency_s == 2.0 and m.tokens_per_task == 15.0
    assert evaluate_traces(traces).tool_set_match is None


def test_bootstrap_interval_brackets_the_mean():
    values = [1.0] * 7 + [0.0] * 3
    lo, hi = bootstrap_ci(values)
    assert lo < 0.7 < hi and 0.3 < lo and hi <= 1.0
    assert bootstrap_ci([1.0] * 5) == (1.0, 1.0)


def test_table_and_plots(tmp_path):
    traces = [run("t1", [("add", {})], "correct"), run("t2", [], "wrong")]
    results = {("teacher", "test"): evaluate_traces(traces), ("student", "test"): evaluate_traces(traces[1:])}
    table = comparison_table(results)
    assert "| teacher | test | 2 | 50%" in table and "| student | test | 1 | 0%" in table
    png = plot_success(results, tmp_path / "success.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    history = [{"step": i, "reward": 0.1 * i, "reward_std": 0.05, "reward/correct": 0.05 * i} for i in range(1, 6)]
    assert plot_reward_curve(history, tmp_path / "reward.png").read_bytes()[:4] == b"\x89PNG"


def test_paired_bootstrap_excludes_zero_when_one_model_wins_on_the_same_tasks():
    # Pooled over two seeds, keyed by (seed, task id): B solves 12 tasks per seed, A those and 3 more.
    b = {(seed, f"t{i}"): float(i < 12) for seed in (0, 1) for i in range(25)}
    a = {(seed, f"t{i}"): float(i < 15) for seed in (0, 1) for i in range(25)}
    paired = paired_bootstrap(a, b)
    assert paired.pairs == 50 and paired.difference == pytest.approx(0.12)
    assert (paired.a, paired.b) == (pytest.approx(0.6), pytest.approx(0.48))
    assert 0 < paired.ci[0] < 0.12 < paired.ci[1]
    # Unpaired, the two intervals overlap: the pairing is what makes the difference visible.
    assert bootstrap_ci(list(b.values()))[1] > bootstrap_ci(list(a.values()))[0]


def test_paired_bootstrap_includes_zero_when_wins_and_losses_balance():
    a = {f"t{i}": float(i < 10) for i in range(50)}
    b = {f"t{i}": float(10 <= i < 20) for i in range(50)}
    paired = paired_bootstrap(a, b)
    assert paired.difference == 0.0 and paired.ci[0] < 0 < paired.ci[1]


def test_paired_bootstrap_pairs_only_shared_tasks_and_refuses_none():
    assert paired_bootstrap({"x": 1.0, "y": 1.0}, {"y": 0.0, "z": 1.0}).pairs == 1
    with pytest.raises(ValueError, match="nothing to pair"):
        paired_bootstrap({"x": 1.0}, {"y": 1.0})
