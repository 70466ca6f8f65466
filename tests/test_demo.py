"""`run_demo(quick=True)`: every stage of the demo runs (scripted teacher, tiny fitted student, SFT, MENTOR GRPO,
evaluation of four models on two splits, report and plots, the student inside the agent). Too short to learn."""

import json

import torch

from mentor_agents.demo.run import run_demo

torch.set_num_threads(1)


def test_quick_demo_runs_every_stage(tmp_path, capsys):
    run = tmp_path / "demo"
    student = run_demo(run, quick=True)

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
    assert "the distilled student inside the agent" in out and "user:" in out
    # The verdict printed is the one the numbers give.
    before = metrics["evaluation"]["untrained student|test"]["success"]
    after = metrics["evaluation"]["sft+mentor|test"]["success"]
    assert ("The student learned" if after > before else "The student did NOT beat") in out
    assert ("did NOT beat" in out) == (after <= before)
