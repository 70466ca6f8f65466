"""The `mentor` command: each stage alone over one run directory, and clear one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from mentor_agents.cli import main

torch.set_num_threads(1)


def test_record_train_eval_report_over_one_run_directory(tmp_path, capsys):
    run = str(tmp_path / "run")
    common = ["calculator", "--run-dir", run, "--concurrency", "2"]
    assert main(["record", *common, "--num-tasks", "6", "--num-eval", "2", "--num-ood", "2"]) == 0
    out = capsys.readouterr().out
    assert "teacher success rate | 100.0%" in out and "6 reward references" in out

    assert main(["record", *common, "--num-tasks", "6", "--num-eval", "2", "--num-ood", "2"]) == 0  # resumes
    assert len((tmp_path / "run" / "traces.jsonl").read_text().splitlines()) == 6

    assert main(["train", *common, "--method", "sft", "--sft-steps", "3"]) == 0
    assert "saved to" in capsys.readouterr().out
    student_dir = tmp_path / "run" / "students" / "sft"
    assert (student_dir / "merged" / "model.safetensors").exists() and (student_dir / "README.md").exists()

    assert main(["eval", *common]) == 0
    report = capsys.readouterr().out
    assert "| teacher | test | 2 | 100%" in report and "| sft | ood | 2 |" in report
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "untrained student|test" in metrics["evaluation"]

    assert main(["report", "--run-dir", run]) == 0
    assert capsys.readouterr().out.strip() == (tmp_path / "run" / "report.md").read_text().strip()


@pytest.mark.parametrize("argv, message", [
    (["train", "calculator", "--run-dir", "{tmp}/empty"], "has no recorded traces"),
    (["report", "--run-dir", "{tmp}/nothing"], "does not exist"),
    (["serve", "{tmp}/missing"], "no such directory"),
    (["record", "nosuchagent", "--run-dir", "{tmp}/r"], "expected 'calculator' or MODULE:ATTR"),
    (["record", "no_such_module:graph", "--run-dir", "{tmp}/r"], "No module named 'no_such_module'"),
    (["record", "calculator", "--run-dir", "{tmp}/r", "--tasks-file", "{tmp}/missing.jsonl"], "missing.jsonl"),
    (["eval"], "give AGENT and --run-dir"),
])
def test_bad_arguments_exit_with_one_line(tmp_path, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    result = subprocess.run([sys.executable, "-m", "mentor_agents.cli", *argv], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_come_from_argparse():
    result = subprocess.run([sys.executable, "-m", "mentor_agents.cli", "train", "calculator"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "--run-dir" in result.stderr
    help_text = subprocess.run([sys.executable, "-m", "mentor_agents.cli", "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    for command in ("demo", "record", "train", "eval", "report", "serve", "proxy"):
        assert command in help_text
