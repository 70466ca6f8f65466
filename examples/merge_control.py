"""Issue 14's control for the merge: the seed's merged SFT model, with no GRPO, on the calculator test split, evaluated
as `paper_comparison` evaluates a student; compared task by task with `sft` (base + SFT adapter, unmerged) and the
`sft+*` students (merged SFT + a GRPO adapter).

    OMP_NUM_THREADS=1 python examples/merge_control.py --run /work/runs/mentor_comparison/runs/teacherA-seed0

Writes ``eval/sft_merged_control-test.jsonl`` under ``--out``; the run directory is only read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mentor_agents.demo import calculator
from mentor_agents.distill import DistillConfig, Run
from mentor_agents.integrations.langgraph.adapter import LangGraphAdapter
from mentor_agents.prefix_cache import ConcurrentBatcher
from mentor_agents.student import load_student
from mentor_agents.tasks import Task
from mentor_agents.traces import ModelStep, TraceStore


def calls(trace) -> list:
    """A run's model outputs without call ids: (content, [(tool, arguments)])."""
    out = []
    for step in trace.steps:
        if isinstance(step, ModelStep):
            message = step.output if isinstance(step.output, dict) else step.output.model_dump()
            out.append((message.get("content"), [(c["function"]["name"], json.dumps(c["function"]["arguments"],
                                                                                     sort_keys=True))
                                                 for c in message.get("tool_calls") or []]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/merge_control"))
    args = parser.parse_args()
    config = json.loads((args.run / "config.json").read_text())
    tasks = [Task.model_validate(t) for t in json.loads((args.run / "tasks.json").read_text())["test"]]
    turns = {"recursion_limit": 2 * config["scale"]["max_turns"]}
    run = Run(args.out, LangGraphAdapter(calculator.build_agent(calculator.ScriptedCalculatorTeacher()).with_config(
        turns)), str(args.run / "train" / "sft" / "merged"), DistillConfig(concurrency=8, timeout_s=900))
    run.splits = {"test": tasks}
    model, tokenizer = load_student(str(args.run / "train" / "sft" / "merged"))
    model.eval()
    batcher = ConcurrentBatcher(model, tokenizer.pad_token_id, max_batch=8)
    chat = run.adapter.student_model(batcher, tokenizer, prefix_cache=None,
                                     max_new_tokens=config["scale"]["max_new_tokens"], model_name="student/sft")
    metrics = run.evaluate_split("sft_merged_control", chat, "test")
    mine = {t.task_id: t for t in TraceStore(args.out / "eval" / "sft_merged_control-test.jsonl").read()}
    print(f"merged SFT, no GRPO: test success {metrics.success:.0%}")
    for name in ("sft", "sft_sparse", "sft_mentor"):
        theirs = {t.task_id: t for t in TraceStore(args.run / "eval" / f"{name}-test.jsonl").read()}
        same = sum(calls(mine[k]) == calls(theirs[k]) for k in mine)
        print(f"same outputs as {name}: {same} of {len(mine)} tasks")


if __name__ == "__main__":
    main()
