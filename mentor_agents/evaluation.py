"""Evaluation metrics over agent runs, comparison tables with bootstrap confidence intervals, and plots.

Any model evaluated inside the agent's graph leaves `Trace`s (the recorder does not care whether the model is a
teacher or a student); these functions turn them into the numbers people compare.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Hashable, Iterable, Mapping, Sequence

from mentor_agents.messages import tool_names
from mentor_agents.references import RewardReference
from mentor_agents.rewards import same_value
from mentor_agents.traces import ModelStep, Trace


@dataclass
class Metrics:
    """Averages over the tasks of one model on one split; ``*_ci`` are 95% bootstrap intervals of the mean."""

    tasks: int
    success: float
    success_ci: tuple[float, float]
    tool_set_match: float | None
    """Share of tasks where the set of tool names called equals the teacher's (None without references)."""
    argument_accuracy: float | None
    """Share of teacher calls reproduced with the same name and arguments."""
    invalid_call_rate: float
    """Invalid calls (unparseable, or naming no offered tool) over all attempted calls."""
    calls_per_task: float
    turns_per_task: float
    latency_s: float
    tokens_per_task: float
    failed_runs: int
    """Runs that ended with an error, the three kinds of stop below included."""
    turn_limit_stops: int = 0
    """Runs cut off by the model-turn cap."""
    loop_stops: int = 0
    """Runs ended because the model repeated its previous turn's tool calls exactly."""
    timeouts: int = 0
    """Runs out of time (recorded, not retried, for a student)."""

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_ci(values: Sequence[float], samples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(samples))
    tail = (1 - level) / 2
    return (means[int(tail * samples)], means[min(samples - 1, int((1 - tail) * samples))])


@dataclass
class PairedDifference:
    """Mean success of model A minus model B over the same tasks, with a paired bootstrap 95% interval."""

    difference: float
    ci: tuple[float, float]
    pairs: int
    a: float
    """Mean success of A over the paired tasks."""
    b: float


def paired_bootstrap(a: Mapping[Hashable, float], b: Mapping[Hashable, float], samples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> PairedDifference:
    """The difference ``mean(a) - mean(b)`` over the keys both have (e.g. ``(seed, task_id)``), with a percentile
    bootstrap interval that resamples pairs, so task difficulty shared by both models cancels out."""
    keys = sorted(set(a) & set(b), key=repr)
    if not keys:
        raise ValueError("no task is scored for both models: nothing to pair")
    diffs = [a[k] - b[k] for k in keys]
    n = len(diffs)
    return PairedDifference(difference=sum(diffs) / n, ci=bootstrap_ci(diffs, samples, seed, level), pairs=n,
                            a=sum(a[k] for k in keys) / n, b=sum(b[k] for k in keys) / n)


def unparsed_calls(trace: Trace) -> int:
    """Calls the model attempted that could not be parsed (``invalid_tool_calls`` of its messages)."""
    return sum(len(step.output.get("invalid_tool_calls") or []) for step in trace.steps if isinstance(step, ModelStep))


def unknown_tool_calls(trace: Trace) -> int:
    offered = tool_names(trace.tools)
    return sum(call.name not in offered for call in trace.tool_calls) if offered else 0


def evaluate_traces(traces: Iterable[Trace], references: Mapping[str, RewardReference] | None = None) -> Metrics:
    """Metrics of one model's runs. Failed runs count as unsuccessful; references (by task id) give the
    teacher-agreement metrics."""
    traces = list(traces)
    n = len(traces)
    successes = [float(t.verdict == "correct") for t in traces]
    calls = [len(t.tool_calls) for t in traces]
    unparsed = [unparsed_calls(t) for t in traces]
    invalid = [u + unknown_tool_calls(t) for u, t in zip(unparsed, traces)]
    set_match: list[float] = []
    arg_hits, arg_total = 0, 0
    for trace in traces:
        reference = (references or {}).get(trace.task_id)
        if reference is None:
            continue
        set_match.append(float({c.name for c in trace.tool_calls} == set(reference.teacher_tools)))
        remaining = list(trace.tool_calls)
        for target in reference.teacher_calls:
            arg_total += 1
            for i, call in enumerate(remaining):
                if call.name == target.name and same_value(call.args, target.args):
                    arg_hits += 1
                    del remaining[i]
                    break
    attempted = sum(calls) + sum(unparsed)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return Metrics(
        tasks=n,
        success=mean(successes),
        success_ci=bootstrap_ci(successes),
        tool_set_match=mean(set_match) if set_match else None,
        argument_accuracy=arg_hits / arg_total if arg_total else None,
        invalid_call_rate=sum(invalid) / attempted if attempted else 0.0,
        calls_per_task=mean(calls),
        turns_per_task=mean([sum(isinstance(s, ModelStep) for s in t.steps) for t in traces]),
        latency_s=mean([t.duration_s for t in traces]),
        tokens_per_task=mean([t.usage.input_tokens + t.usage.output_tokens for t in traces]),
        failed_runs=sum(t.error is not None for t in traces),
        turn_limit_stops=sum(t.stopped == "turn_limit" for t in traces),
        loop_stops=sum(t.stopped == "loop" for t in traces),
        timeouts=sum(t.stopped == "timeout" for t in traces),
    )


def comparison_table(results: Mapping[tuple[str, str], Metrics]) -> str:
    """A markdown table with one row per (model, split)."""
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{x:.0%}"

    lines = [
        "| model | split | tasks | success (95% CI) | tool-set match | argument acc. | invalid calls | calls/task "
        "| turns | latency s | stopped: turn cap / loop / timeout |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, split), m in results.items():
        lo, hi = m.success_ci
        lines.append(
            f"| {model} | {split} | {m.tasks} | {m.success:.0%} ({lo:.0%}–{hi:.0%}) | {pct(m.tool_set_match)} | "
            f"{pct(m.argument_accuracy)} | {pct(m.invalid_call_rate)} | {m.calls_per_task:.2f} | "
            f"{m.turns_per_task:.2f} | {m.latency_s:.2f} | {m.turn_limit_stops} / {m.loop_stops} / {m.timeouts} |"
        )
    return "\n".join(lines)


def save_figure(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_success(results: Mapping[tuple[str, str], Metrics], path: str | Path) -> Path:
    """Grouped bars of success by model and split, with the bootstrap intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(model for model, _ in results))
    splits = list(dict.fromkeys(split for _, split in results))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(min(16, max(5, 2 + 0.25 * len(splits) * len(models))), 3.6))
    for i, model in enumerate(models):
        xs, ys, errs = [], [], [[], []]
        for j, split in enumerate(splits):
            m = results.get((model, split))
            if m is None:
                continue
            xs.append(j + i * width)
            ys.append(m.success)
            errs[0].append(m.success - m.success_ci[0])
            errs[1].append(m.success_ci[1] - m.success)
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=model)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(splits))], splits)
    ax.set_ylabel("task success")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_title("Success by method and split")
    return save_figure(fig, path)


def plot_reward_curve(history: Sequence[Mapping[str, float]], path: str | Path, title: str = "Reward") -> Path:
    """The mean reward per training step with ±1 std, and each ``reward/<component>`` series found in ``history``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in history if "reward" in row]
    steps = [row.get("step", i + 1) for i, row in enumerate(rows)]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    mean = [row["reward"] for row in rows]
    std = [row.get("reward_std", 0.0) for row in rows]
    ax.plot(steps, mean, label="reward", color="black")
    ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.15, color="black")
    components = sorted({key for row in rows for key in row if key.startswith("reward/")})
    for key in components:
        ax.plot(steps, [row.get(key, float("nan")) for row in rows], label=key.split("/", 1)[1], linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
