"""SIGKILL `record`, `train` and `distill` ten times each at seeded, varied points (after new trace lines, new
checkpoint directories, new metrics lines, new run files, or after a random delay), resume to completion, and check
that nothing was lost, duplicated or corrupted, that training went on from the last checkpoint, and that the final
artifacts load. The runs happen in children forked by tests/kill_driver.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch

import kill_driver as kd
from mentor_agents.distill import RunState
from mentor_agents.references import load_references
from mentor_agents.traces import TraceStore
from mentor_agents.training import load_trained

torch.set_num_threads(1)

KILLS = 10


def run_driver(kind: str, work: Path, seed: int, kills: int = KILLS) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, kd.__file__, kind, str(work), str(seed), str(kills)], env=env,
                          capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stderr[-4000:]
    attempts = [json.loads(line) for line in (work / "attempts.jsonl").read_text().splitlines()]
    killed = [a for a in attempts if a["killed"]]
    assert len(killed) == kills and all(a["signal"] == 9 for a in killed), attempts
    assert attempts[-1]["trigger"] == ["none"] and attempts[-1]["exit"] == 0
    assert len({json.dumps(a["trigger"]) for a in killed}) > 3  # varied kill points, not one repeated
    return attempts


def assert_each_step_once(metrics: Path, steps: int) -> None:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows if "train_runtime" not in r] == list(range(1, steps + 1))
    # The end-of-training summary is logged after the last checkpoint is saved: a kill between the two leaves a
    # finished run that resumes by loading that checkpoint, with no summary line. Never two.
    assert sum("train_runtime" in r for r in rows) <= 1


def assert_resumed_from_checkpoints(work: Path) -> list[dict]:
    """Each resumed attempt's first optimizer step is the one after its checkpoint."""
    starts = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines()]
    resumed = [s for s in starts if s["resumed_from"]]
    assert resumed, starts
    for start in starts:
        previous = int(start["resumed_from"].split("-")[1]) if start["resumed_from"] else 0
        assert start["first_step"] == previous + 1, start
    return starts


def test_kill_record_ten_times_then_resume(tmp_path):
    run_driver("record", tmp_path, seed=0)
    traces = TraceStore(tmp_path / "traces.jsonl").read()  # strict: every line parses
    expected = [t.id for t in kd.make_tasks(kd.RECORD_TASKS, "train")]
    assert Counter(t.task_id for t in traces) == Counter(expected)  # every task exactly once
    assert all(t.error is None and t.verdict == "correct" for t in traces)


def test_kill_train_ten_times_then_resume(tmp_path):
    run_driver("train", tmp_path, seed=1)
    assert_resumed_from_checkpoints(tmp_path)
    run = tmp_path / "run"
    for stage, steps in (("sft", kd.TRAIN["sft_steps"]), ("mentor", kd.TRAIN["steps"])):
        assert_each_step_once(run / stage / "metrics.jsonl", steps)
        info = json.loads((run / stage / "train_config.json").read_text())
        assert info["global_step"] == steps  # not one step past max_steps after resuming a finished stage
    model, _ = load_trained(run / "mentor" / "adapter", base_model=str(run / "sft" / "merged"))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


def test_kill_distill_ten_times_then_resume(tmp_path):
    run_driver("distill", tmp_path, seed=2)
    run = tmp_path / "run"
    tasks = json.loads((run / "tasks.json").read_text())
    traces = TraceStore(run / "traces.jsonl").read()
    assert Counter(t.task_id for t in traces) == Counter(t["id"] for t in tasks["train"])
    assert {r.task_id for r in load_references(run / "references.jsonl")} == {t.task_id for t in traces}
    for name in ("teacher", "untrained_student", "mentor"):
        evaluated = TraceStore(run / "eval" / f"{name}-test.jsonl").read()
        assert Counter(t.task_id for t in evaluated) == Counter(t["id"] for t in tasks["test"]), name
    state = RunState.open(run)
    assert {"tasks", "traces", "train:mentor"} <= set(state.done)
    assert not Path(state.done["train:mentor"]["adapter_dir"]).is_absolute()  # the run directory can move
    metrics = json.loads((run / "metrics.json").read_text())
    assert "mentor|test" in metrics["evaluation"]
    assert (run / "report.md").read_text().startswith("# Distillation report")
    assert json.loads((tmp_path / "done.json").read_text())["report"]
    assert_resumed_from_checkpoints(tmp_path)
    assert_each_step_once(run / "train" / "mentor" / "mentor" / "metrics.jsonl", kd.DISTILL.train.steps)
    model, _ = load_trained(state.info("train:mentor")["adapter_dir"], state.info("train:mentor")["base_model"])
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


def test_kill_mentor_train_with_its_default_flags_then_resume(tmp_path):
    """`mentor train` without --save-steps used to restart at step 1 after a kill, though --help said a rerun
    resumes (issue 15, case 8): the CLI now checkpoints by default, and this drives it with its defaults."""
    run_driver("cli-train", tmp_path, seed=3, kills=4)
    assert_resumed_from_checkpoints(tmp_path)
    run = tmp_path / "run"
    assert_each_step_once(run / "train" / "mentor" / "mentor" / "metrics.jsonl", 10)
    assert (run / "students" / "mentor" / "adapter").is_dir()
    model, _ = load_trained(RunState.open(run).info("train:mentor")["adapter_dir"],
                            RunState.open(run).info("train:mentor")["base_model"])
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
