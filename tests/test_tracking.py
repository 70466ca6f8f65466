"""`TrainConfig(report_to="trackio")`: a tiny GRPO run logs to a local trackio project, reward components included,
with no network. Runs where trackio is installed (`pip install -e ".[tracking]"`); it is not in the dev extra because
with trackio installed TRL's GRPO module imports it, and it brings starlette and uvicorn into every core import
(tests/test_packaging.py forbids that)."""

import json
import os

import pytest
import torch

from mentor_agents.app.cli import main

torch.set_num_threads(1)


def test_mentor_run_writes_a_local_trackio_project_with_the_reward_components(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is imported, below
    trackio = pytest.importorskip("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    if trackio.utils.TRACKIO_DIR != tmp_path / "trackio":
        pytest.skip("trackio was imported earlier in this process with another TRACKIO_DIR")
    run = str(tmp_path / "run")
    common = ["calculator", "--run-dir", run, "--concurrency", "2"]
    assert main(["record", *common, "--num-tasks", "4", "--num-eval", "1", "--num-ood", "1"]) == 0
    assert main(["train", *common, "--method", "mentor", "--steps", "2", "--num-generations", "2",
                 "--prompts-per-step", "2", "--report-to", "trackio"]) == 0

    assert SQLiteStorage.get_projects() == ["mentor-agents"]
    assert os.listdir(tmp_path / "trackio")
    [run_name] = SQLiteStorage.get_runs("mentor-agents")
    logs = SQLiteStorage.get_logs("mentor-agents", run_name)
    keys = set().union(*logs)
    assert {"train/reward", "train/loss"} <= keys
    components = {k.removeprefix("train/") for k in keys if k.startswith("train/reward/")}
    metrics = tmp_path / "run" / "train" / "mentor" / "mentor" / "metrics.jsonl"
    logged = set().union(*(json.loads(line) for line in metrics.read_text().splitlines()))
    assert "reward/gated" in components and components == {k for k in logged if k.startswith("reward/")}
    assert len([row for row in logs if "train/reward" in row]) == 2
