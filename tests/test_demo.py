"""`run_demo(quick=True)`: every stage of the demo runs (scripted teacher, tiny fitted student, SFT, MENTOR GRPO,
evaluation of four models on two splits, report and plots, the student inside the agent). Too short to learn.
The demo's own parts (closing examples, MENTOR verdict, GRPO reward summary, timing line) are checked alone."""

import importlib.util
import json
import re
import resource
import time
from dataclasses import replace
from pathlib import Path

import torch

from mentor_agents.demo.calculator import make_tasks
from mentor_agents.demo.run import (
    QUICK_CONFIG,
    closing_examples,
    grpo_scale,
    mentor_verdict,
    reward_start_end,
    run_demo,
    timing_line,
)
from mentor_agents.traces import Trace, TraceStore

torch.set_num_threads(1)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_quick_demo_runs_every_stage(tmp_path, capsys):
    run = tmp_path / "demo"
    cpu_before, wall_start = cpu_seconds(), time.perf_counter()
    student = run_demo(run, quick=True)
    cpu_after, wall = cpu_seconds(), time.perf_counter() - wall_start

    for name in ("report.md", "metrics.json", "reward_curve.png", "success.png", "tasks.json", "traces.jsonl",
                 "references.jsonl", "student/config.json", "student/tokenizer.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    models = {key.split("|")[0] for key in metrics["evaluation"]}
    splits = {key.split("|")[1] for key in metrics["evaluation"]}
    assert models == {"teacher", "untrained student", "sft", "sft+mentor"} and splits == {"test", "ood"}
    assert metrics["evaluation"]["teacher|test"]["success"] == 1.0
    assert any("reward" in row for row in metrics["training"]["sft+mentor"])
    assert student.method == "sft+mentor"

    out = capsys.readouterr().out
    assert "held-out success" in out and "MENTOR (sft+mentor)" in out and "untrained student" in out
    assert "GRPO mean reward" in out and grpo_scale(QUICK_CONFIG.train) in " ".join(out.split())
    assert "the distilled student inside the agent" in out and "user:" in out
    # The verdicts printed are the ones the numbers give.
    before = metrics["evaluation"]["untrained student|test"]["success"]
    after = metrics["evaluation"]["sft+mentor|test"]["success"]
    assert ("The student learned" if after > before else "The student did NOT beat") in out
    assert ("did NOT beat" in out) == (after <= before)
    assert mentor_verdict(metrics) in " ".join(out.split())
    # The closing examples are the held-out tasks the evaluation says were solved / failed.
    solved, failed = closing_examples(run, make_tasks(4, "test", seed=0))
    assert ("it solved in the evaluation" in out) == (solved is not None)
    assert ("it failed in the evaluation" in out) == (failed is not None)
    # The timing line counts this whole process: at least the CPU spent before the demo, at most all of it so far.
    line = re.search(r"mentor demo took (\d+) min (\d+) s of wall time and ([\d,]+) CPU-seconds", out)
    assert line is not None
    printed_cpu = int(line[3].replace(",", ""))
    assert round(cpu_before) <= printed_cpu <= round(cpu_after) + 1
    assert int(line[1]) * 60 + int(line[2]) >= int(wall)
    assert "(1 torch thread)" in out


def trace(task, verdict):
    return Trace(task_id=task.id, task_input=task.input, ground_truth=task.ground_truth, verdict=verdict,
                 final_answer="Answer: 1")


def test_closing_examples_pick_the_first_solved_and_the_first_failed_task(tmp_path):
    tasks = make_tasks(5, "test", seed=0)
    store = TraceStore(tmp_path / "eval" / "sft_mentor-test.jsonl")
    for task, verdict in zip(tasks, ["wrong", "unknown", "correct", "wrong", "correct"]):
        store.append(trace(task, verdict))
    assert closing_examples(tmp_path, tasks) == (tasks[2], tasks[0])
    # Tasks missing from the evaluation are never picked; a split with no failure has no failed example.
    assert closing_examples(tmp_path, [tasks[4], tasks[2]]) == (tasks[4], None)
    assert closing_examples(tmp_path, make_tasks(7, "test", seed=0)[5:]) == (None, None)


def test_mentor_verdict_says_whether_grpo_helped():
    def metrics(sft, mentor):
        return {"evaluation": {"sft|test": {"success": sft}, "sft+mentor|test": {"success": mentor}}}

    assert mentor_verdict(metrics(0.6, 0.7)) == "MENTOR GRPO added 10 points of held-out success over SFT (60% -> 70%)."
    assert mentor_verdict(metrics(0.7, 0.7)).startswith("MENTOR GRPO did not help here: held-out success 70% after SFT")
    assert "did not help" in mentor_verdict(metrics(0.7, 0.6))


def test_grpo_scale_warns_that_a_short_grpo_has_no_learning_curve():
    short = grpo_scale(QUICK_CONFIG.train)
    assert short.startswith("GRPO ran 2 steps of 2 problem(s) x 2 rollouts (8 rollouts).") and "how hard" in short
    assert "how hard" not in grpo_scale(replace(QUICK_CONFIG.train, steps=50))


def test_reward_start_end_averages_the_first_and_last_steps():
    rows = [{"loss": 1.0}] + [{"reward": r} for r in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]
    assert reward_start_end(rows, window=2) == (0.1, 0.9)
    assert reward_start_end(rows[:3], window=5) == (0.0, 0.2)  # 2 steps: the first, then the last
    assert reward_start_end(rows[:2], window=5) == (0.0, 0.0)
    assert reward_start_end([{"loss": 1.0}]) is None


def test_timing_line_names_wall_cpu_and_threads():
    line = timing_line(125.4, 1234.5)
    assert line.startswith("mentor demo took 2 min 05 s of wall time and 1,234 CPU-seconds since the process started")
    assert line.endswith(f"({torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''})")


def example(name: str):
    """The script ``examples/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stability_table_replaces_its_block_and_reports_the_spread(tmp_path):
    stability = example("demo_stability")

    def run(seed, threads, sft, mentor):
        return {"seed": seed, "threads": threads, "wall_s": 61.0, "cpu_s": 100.0 + seed, "grpo_reward": [0.1] * 5 + [0.3] * 5,
                "success": {"sft|test": sft, "sft+mentor|test": mentor, "sft+mentor|ood": 0.0}}

    runs = [run(0, 1, 0.6, 0.62), run(1, 2, 0.7, 0.68)]
    stats = stability.summary(runs)
    assert stats["sft"]["spread_points"] == 10 and stats["sft+mentor"]["spread_points"] == 6
    assert stats["max_cpu_s"] == 101.0
    page = tmp_path / "demo_run.md"
    page.write_text("# Latest run\n\nkept\n")
    stability.write_markdown(page, runs, stats, "conditions A")
    stability.write_markdown(page, runs[:1], stability.summary(runs[:1]), "conditions B")
    text = page.read_text()
    assert text.count(stability.BEGIN) == 1 and "conditions B" in text and "conditions A" not in text
    assert text.endswith("# Latest run\n\nkept\n")
    assert "| 0 | 1 | 1 min 01 s | 100 | 60% | 62% | 0% | 0.10 -> 0.30 |" in text


def test_sft_sweep_table_has_one_row_per_variant_with_its_spread(tmp_path):
    sweep = example("demo_sft_sweep")

    runs = [{"variant": "all_layers_b4", "seed": 2, "threads": 1, "success": 0.59375, "untrained": 0.0625,
             "cpu_s": 614.3},
            {"variant": "lr1e-3", "seed": 0, "threads": 1, "success": 0.75, "untrained": 0.0625, "cpu_s": 600.0},
            {"variant": "all_layers_b4", "seed": 0, "threads": 1, "success": 0.625, "untrained": 0.0625,
             "cpu_s": 529.9}]
    sweep.write_results(runs, tmp_path)
    table = (tmp_path / "demo_sft_sweep.md").read_text()
    assert "| all_layers_b4 | " in table and "| 0, 2 | 62%, 59% | 61% | 3 | 530, 614 |" in table
    assert "| lr1e-3 | {'sft_lr': 0.001} | 0 | 75% | 75% | 0 | 600 |" in table
    assert json.loads((tmp_path / "demo_sft_sweep.json").read_text())["runs"] == runs
