"""The `mentor` command: each stage alone over one run directory, and clear one-line errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from mentor_agents.app.cli import main

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
    assert main(["train", *common, "--method", "mentor", "--steps", "1", "--num-generations", "2",
                 "--prompts-per-step", "1"]) == 0
    # The card reads the reward, teacher and traces from the train_config.json written beside the adapter.
    card = (tmp_path / "run" / "students" / "mentor" / "README.md").read_text()
    assert "| reward | (name='mentor'" in card and "| teacher | not recorded" not in card, card
    assert "| teacher traces | 6 teacher traces, 6 verified references |" in card, card

    assert main(["eval", *common]) == 0
    report = capsys.readouterr().out
    assert "| teacher | test | 2 | 100%" in report and "| sft | ood | 2 |" in report and "| mentor | test |" in report
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "untrained student|test" in metrics["evaluation"]

    assert main(["report", "--run-dir", run]) == 0
    assert capsys.readouterr().out.strip() == (tmp_path / "run" / "report.md").read_text().strip()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Files and directories a careless user points the CLI at."""
    from mentor_agents.student import tiny_student_dir

    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "blank.jsonl").write_text("\n  \n")
    (tmp / "binary.jsonl").write_bytes(bytes(range(128, 256)) * 4)
    (tmp / "a-file").write_text("not a directory")
    for name, state in (("state-list", "[]"), ("state-no-done", '{"version": 1}'), ("state-corrupt", '{"done": ')):
        (tmp / name).mkdir()
        (tmp / name / "state.json").write_text(state)
    for name in ("truncated", "bad-config"):
        shutil.copytree(tiny_student_dir(), tmp / name)
    weights = tmp / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (tmp / "bad-config" / "config.json").write_text('{"model_type": ')
    (tmp / "agent_raises.py").write_text("raise RuntimeError('boom while importing')\n")
    (tmp / "agent_syntax.py").write_text("def graph(:\n")
    return tmp


@pytest.mark.parametrize("argv, message", [
    (["train", "calculator", "--run-dir", "{tmp}/empty"], "has no recorded traces"),
    (["report", "--run-dir", "{tmp}/nothing"], "does not exist"),
    (["serve", "{tmp}/missing"], "no such directory"),
    (["record", "nosuchagent", "--run-dir", "{tmp}/r"], "expected 'calculator' or MODULE:ATTR"),
    (["record", "no_such_module:graph", "--run-dir", "{tmp}/r"], "No module named 'no_such_module'"),
    (["record", "calculator", "--run-dir", "{tmp}/r", "--tasks-file", "{tmp}/missing.jsonl"], "missing.jsonl"),
    (["eval"], "give AGENT and --run-dir"),
    # Issue 15, case 10: an empty tasks file made the teacher invent (and pay for) 64 tasks.
    (["record", "calculator", "--run-dir", "{tmp}/r", "--tasks-file", "{tmp}/empty.jsonl"], "has no tasks"),
    (["record", "calculator", "--run-dir", "{tmp}/r", "--tasks-file", "{tmp}/blank.jsonl"], "has no tasks"),
    # Issue 15, case 11: tracebacks and unclear messages.
    (["record", "calculator", "--run-dir", "{tmp}/a-file"], "is a file"),
    (["record", "calculator", "--run-dir", "{tmp}/r", "--tasks-file", "{tmp}"], "is a directory"),
    (["record", "calculator", "--run-dir", "{tmp}/r", "--tasks-file", "{tmp}/binary.jsonl"], "not a UTF-8 text"),
    (["train", "calculator", "--run-dir", "{tmp}/state-list"], "state.json: not a run state"),
    (["train", "calculator", "--run-dir", "{tmp}/state-no-done"], "has no recorded traces"),
    (["train", "calculator", "--run-dir", "{tmp}/state-corrupt"], "state.json: not valid JSON"),
    (["train", "calculator", "--run-dir", "{tmp}/empty", "--num-generations", "1"], "num_generations must be at least 2"),
    (["serve", "{tmp}/truncated"], "cannot load the model from"),
    (["serve", "{tmp}/bad-config"], "cannot load the model from"),
    (["serve", "{tmp}/bad-config", "--port", "99999"], "--port 99999"),  # before loading, not after
    (["serve", "{tmp}/truncated", "--adapter"], "has no adapter/ directory"),
    (["record", "agent_raises:graph", "--run-dir", "{tmp}/r"], "RuntimeError: boom while importing"),
    (["record", "agent_syntax:graph", "--run-dir", "{tmp}/r"], "syntax error"),
    (["record", "os:sep", "--run-dir", "{tmp}/r"], "sep is a str, not a compiled LangGraph graph"),
    (["proxy", "--upstream", "http://127.0.0.1:9/v1", "--store", "{tmp}/t.jsonl", "--port", "0"], "--port 0"),
])
def test_bad_arguments_exit_with_one_line(bad_inputs, argv, message):
    result = run_cli([a.replace("{tmp}", str(bad_inputs)) for a in argv], str(bad_inputs))
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def run_cli(args: list[str], extra_path: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([extra_path, os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, "-m", "mentor_agents.app.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_debug_shows_the_traceback_of_a_mentor_error(bad_inputs):
    args = ["record", "calculator", "--run-dir", str(bad_inputs / "a-file")]
    for result in (run_cli(["--debug", *args], str(bad_inputs)), run_cli(args, str(bad_inputs), MENTOR_DEBUG="1")):
        assert result.returncode == 1
        assert "Traceback" in result.stderr and "InvalidInputError: run directory" in result.stderr


def test_unexpected_errors_keep_their_traceback(tmp_path):
    """An error that is not mentor_agents' own (here: the user's graph factory fails) is not cut to one line."""
    (tmp_path / "agent_factory_fails.py").write_text("def graph():\n    raise ValueError('bug in the factory')\n")
    result = run_cli(["record", "agent_factory_fails:graph", "--run-dir", str(tmp_path / "r")], str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ValueError: bug in the factory" in result.stderr


def test_a_run_directory_works_after_a_move_and_from_another_directory(tmp_path, monkeypatch, capsys):
    """Run directories stored paths as given: a relative --run-dir, or a moved run directory, broke later stages
    (issue 15, case 9). They are stored relative to the run directory now."""
    monkeypatch.chdir(tmp_path)
    common = ["calculator", "--run-dir", "run", "--concurrency", "2"]
    assert main(["record", *common, "--num-tasks", "4", "--num-eval", "2", "--num-ood", "0"]) == 0
    assert main(["train", *common, "--method", "sft", "--sft-steps", "2"]) == 0
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["done"]["train:sft"]["adapter_dir"] == os.path.join("train", "sft", "sft", "adapter")
    (tmp_path / "run").rename(tmp_path / "moved")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["eval", "calculator", "--run-dir", str(tmp_path / "moved"), "--concurrency", "2"]) == 0
    assert "| sft | test | 2 |" in capsys.readouterr().out


def test_usage_errors_come_from_argparse():
    result = subprocess.run([sys.executable, "-m", "mentor_agents.app.cli", "train", "calculator"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "--run-dir" in result.stderr
    help_text = subprocess.run([sys.executable, "-m", "mentor_agents.app.cli", "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    for command in ("demo", "record", "train", "eval", "report", "serve", "proxy"):
        assert command in help_text
