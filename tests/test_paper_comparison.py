"""The comparison script (examples/paper_comparison.py) end to end in its --quick mode on the tiny student: every
split, the warm-started RL methods, the recipe sweep on the dev split, the paired tables, and --report-only."""

import contextlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "examples" / "paper_comparison.py"
METHODS = ["untrained", "sft", "sft+sparse", "sft+mentor", "sft+no_match", "mentor"]


def script():
    spec = importlib.util.spec_from_file_location("paper_comparison", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_comparison_runs_every_method_and_split_and_reports_paired_differences(tmp_path):
    comparison = script()
    comparison.main(["--quick", "--out", str(tmp_path), "--methods", *METHODS])
    comparison.main(["--quick", "--out", str(tmp_path), "--sweep"])
    run = json.loads((tmp_path / "results.json").read_text())["runs"]["teacherA-seed0"]
    evaluation = run["evaluation"]
    for method in METHODS:
        assert set(evaluation[method]) == set(comparison.SPLITS), method
        assert run["cpu_hours"][method] > 0, method
    for split in comparison.SPLITS:  # the same seeded tasks for every model
        assert len({tuple(sorted(evaluation[m][split]["outcomes"])) for m in METHODS}) == 1, split
    training = run["training"]
    assert {training[m]["method"] for m in ("sft+sparse", "sft+mentor", "sft+no_match")} == {"sft+sparse",
                                                                                         "sft+mentor"}
    assert [training[m]["reward"] for m in ("sft+sparse", "sft+no_match", "mentor")] == ["sparse", "no_match",
                                                                                       "mentor"]
    for method in ("sft+sparse", "sft+mentor", "mentor"):
        curves = training[method]["curves"]
        assert set(comparison.DYNAMICS) <= set(curves), curves.keys()
        assert (tmp_path / "plots" / f"dynamics-teacherA-seed0-{comparison.method_dir(method)}.png").is_file()
    assert (tmp_path / "plots" / "success-teacherA.png").is_file()

    for method in METHODS:  # every agent run of every split ended one way
        for split in ("test", "ood_phrasing", "ood_tools", "inventory"):
            assert sum(run["endings"][method][split].values()) == evaluation[method][split]["tasks"], (method, split)

    report = (tmp_path / "results.md").read_text()
    for a, b in comparison.PAIRS:
        for split in comparison.SPLITS:
            assert f"| {a} − {b} | {split} |" in report, (a, b, split)
    # The sweep trains from the same SFT model and is scored on dev only, never on test, and stays out of the tables.
    state = json.loads((tmp_path / "runs" / "teacherA-seed0" / "state.json").read_text())["done"]
    sweep_evals = [k for k in state if k.startswith("eval:sweep/")]
    assert len(sweep_evals) == 2 and all(k.endswith(":dev") for k in sweep_evals)
    assert "sweep" not in report and (tmp_path / "sweep.md").read_text().count("| lr=") == 2

    (tmp_path / "results.md").unlink()
    comparison.main(["--report-only", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "results.json").read_text())["runs"]["teacherA-seed0"] == run
    assert (tmp_path / "results.md").read_text() == report

    # `untrained` alone calls no teacher: it runs on teacher B's splits with B's endpoint unreachable (the tiny
    # student is fitted to a teacher's traces, so it is copied in).
    run_b = tmp_path / "b" / "runs" / "teacherB-seed0"
    shutil.copytree(tmp_path / "runs" / "teacherA-seed0" / "student", run_b / "student")
    comparison.main(["--quick", "--out", str(tmp_path / "b"), "--skip-teacher-a", "--teacher-b-url",
                     "http://127.0.0.1:9/v1", "--methods", "untrained"])
    done = json.loads((run_b / "state.json").read_text())["done"]
    assert {k for k in done if k.startswith(("eval:", "teacher"))} == {f"eval:untrained:{s}" for s in comparison.SPLITS}

    # results.json is the record: with the run directory gone, --report-only writes the same report from it.
    shutil.rmtree(tmp_path / "runs")
    (tmp_path / "results.md").unlink()
    comparison.main(["--report-only", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "results.json").read_text())["runs"]["teacherA-seed0"] == run
    assert (tmp_path / "results.md").read_text() == report


def test_skip_teacher_evals_records_the_teacher_and_runs_it_on_no_split(tmp_path):
    comparison = script()
    with contextlib.ExitStack() as stack:
        [(name, teacher)] = comparison.teachers(stack, comparison.parse_args(["--quick"]))
        run = comparison.Comparison(tmp_path, name, teacher, 0, comparison.SCALES["quick"],
                                    comparison.RECIPES["quick"])
        run.prepare(teacher_evals=False)
    done = json.loads((tmp_path / "runs" / "teacherA-seed0" / "state.json").read_text())["done"]
    assert {"traces", "teacher:train"} <= set(done) and not [k for k in done if k.startswith("eval:")]
    assert len(run.run.traces) == comparison.SCALES["quick"].train


def test_the_swept_recipe_is_the_best_dev_cell_and_a_tie_goes_to_the_larger_reward_rise(tmp_path):
    comparison = script()
    cells = [{"recipe": "sft (no GRPO: the start of every cell)", "dev_success": 1.0},
             {"recipe": "lr=0.0002,num_generations=8,temperature=1.5", "dev_success": 0.95, "reward_first5": 0.65,
              "reward_last5": 0.75},
             {"recipe": "lr=5e-05,num_generations=8,temperature=1.5", "dev_success": 0.95, "reward_first5": 0.60,
              "reward_last5": 0.80},
             {"recipe": "lr=5e-05,num_generations=4,temperature=1.5", "dev_success": 0.90, "reward_first5": 0.1,
              "reward_last5": 0.9}]
    (tmp_path / "sweep.json").write_text(json.dumps({"cells": cells}))
    assert comparison.swept_recipe(tmp_path) == "lr=5e-05,num_generations=8,temperature=1.5"
    assert comparison.Recipe.parse("lr=5e-05,num_generations=8,temperature=1.5,steps=50").steps == 50
    (tmp_path / "sweep.json").write_text(json.dumps({"cells": cells[:1]}))
    with pytest.raises(SystemExit, match="no finished recipe cell"):
        comparison.swept_recipe(tmp_path)


def test_a_run_ends_in_the_first_way_that_applies():
    comparison = script()
    from mentor_agents.traces import ModelStep, ToolCall, Trace

    add = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}

    def run(*outputs: dict, verdict: str = "wrong", stopped: str | None = None) -> Trace:
        steps = [ModelStep(input_messages=[], output=o, tool_calls=[ToolCall(id="c", name=c["name"], args={})
                                                                   for c in o.get("tool_calls", [])])
                 for o in outputs]
        return Trace(task_id="t", task_input="1 + 2?", tools=[add], steps=steps, verdict=verdict, stopped=stopped)

    valid = {"role": "assistant", "content": "", "tool_calls": [{"name": "add"}]}
    unknown = {"role": "assistant", "content": "", "invalid_tool_calls": [{"name": "plus", "error": "unknown tool"}]}
    malformed = {"role": "assistant", "content": "", "invalid_tool_calls": [{"name": None, "error": "bad JSON"}]}
    text = {"role": "assistant", "content": "Answer: 4"}
    assert comparison.run_ending(run(valid, text, verdict="correct")) == "correct"
    assert comparison.run_ending(run(valid, valid, stopped="turn_limit")) == "cut off"
    assert comparison.run_ending(run(valid, unknown)) == "unknown tool"
    assert comparison.run_ending(run(malformed)) == "malformed call"
    assert comparison.run_ending(run(text)) == "no call"
    assert comparison.run_ending(run(valid, text)) == "wrong after valid calls"
