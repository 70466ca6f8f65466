"""Issue 14's control for the student's unknown-tool calls: out of domain the SFT student calls tools that do not
exist (``spend``, ``side``), its parser rejects the call, and the run ends with no answer. Here the same merged SFT
model runs the calculator's OOD splits with those calls passed on as tool calls instead (as ``ChatOpenAI`` passes
them), so the graph's tool node answers "not a valid tool" and the student gets another turn. Compared task by task
with the comparison's ``sft`` runs.

    OMP_NUM_THREADS=1 python examples/unknown_tool_feedback.py --run /work/runs/mentor_comparison/runs/teacherA-seed0

Writes ``eval/sft_merged_feedback-<split>.jsonl`` and ``unknown_tool_feedback.json`` under ``--out``; the run
directory is only read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mentor_agents.demo import calculator
from mentor_agents.distill import DistillConfig, Run, write_json_atomic
from mentor_agents.integrations.langgraph.adapter import LangGraphAdapter
from mentor_agents.integrations.langgraph.student_model import StudentChatModel
from mentor_agents.messages import tool_names
from mentor_agents.prefix_cache import ConcurrentBatcher
from mentor_agents.student import load_student
from mentor_agents.tasks import Task
from mentor_agents.toolcalls import as_call, load_json
from mentor_agents.traces import ModelStep, Trace, TraceStore

SPLITS = ("ood_phrasing", "ood_tools")


class UnknownToolsPassedOn(StudentChatModel):
    """The student chat model, except that a well-formed call to a tool it was not given becomes a tool call."""

    def _chat(self, messages: list, stop: list[str] | None, recorders: list, **kwargs: Any) -> Any:
        result = super()._chat(messages, stop, recorders, **kwargs)
        message = result.generations[0].message
        passed, kept = [], []
        for bad in message.invalid_tool_calls:
            payload, error = load_json(bad["args"] or "")
            call = None if error else as_call(payload)
            if bad["name"] and call is not None and not isinstance(call, str):
                passed.append({"name": call.name, "args": call.arguments, "id": bad["id"], "type": "tool_call"})
            else:
                kept.append(bad)
        if passed:
            result.generations[0].message = message.model_copy(update={
                "tool_calls": [*message.tool_calls, *passed], "invalid_tool_calls": kept})
        return result


def told_unknown(trace: Trace) -> bool:
    """Whether a model turn of ``trace`` was shown the tool node's answer to a call of a tool it was not given (read
    from the turn's input: a run stopped for repeating itself has no tool step for it)."""
    offered = tool_names(trace.tools)
    return any(m.get("role") == "tool" and m.get("name") not in offered
               for step in trace.steps if isinstance(step, ModelStep) for m in step.input_messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/unknown_tool_feedback"))
    args = parser.parse_args()
    config = json.loads((args.run / "config.json").read_text())
    tasks = json.loads((args.run / "tasks.json").read_text())
    turns = {"recursion_limit": 2 * config["scale"]["max_turns"]}
    merged = str(args.run / "train" / "sft" / "merged")
    run = Run(args.out, LangGraphAdapter(calculator.build_agent(calculator.ScriptedCalculatorTeacher()).with_config(
        turns)), merged, DistillConfig(concurrency=8, timeout_s=900))
    run.splits = {split: [Task.model_validate(t) for t in tasks[split]] for split in SPLITS}
    model, tokenizer = load_student(merged)
    model.eval()
    chat = UnknownToolsPassedOn(model=ConcurrentBatcher(model, tokenizer.pad_token_id, max_batch=8),
                                tokenizer=tokenizer, prefix_cache=None,
                                max_new_tokens=config["scale"]["max_new_tokens"], model_name="student/sft")
    report = {}
    for split in SPLITS:
        metrics = run.evaluate_split("sft_merged_feedback", chat, split)
        mine = TraceStore(args.out / "eval" / f"sft_merged_feedback-{split}.jsonl").read()
        answered = [t for t in mine if told_unknown(t)]
        before = {t.task_id: t.verdict for t in TraceStore(args.run / "eval" / f"sft-{split}.jsonl").read()}
        report[split] = {"tasks": metrics.tasks, "success": metrics.success, "success_ci": metrics.success_ci,
                         "sft_success": sum(v == "correct" for v in before.values()) / len(before),
                         "runs_told_a_tool_is_unknown": len(answered),
                         "correct_after_being_told": sum(t.verdict == "correct" for t in answered),
                         "repeated_the_call": sum(t.stopped == "loop" for t in answered),
                         "calls_per_task": metrics.calls_per_task, "turns_per_task": metrics.turns_per_task}
        print(f"{split}: {metrics.success:.0%} with unknown tools answered (sft as evaluated: "
              f"{report[split]['sft_success']:.0%}); {len(answered)} runs were told a tool is unknown, "
              f"{report[split]['correct_after_being_told']} of them then answered correctly, "
              f"{report[split]['repeated_the_call']} repeated the same call", flush=True)
    write_json_atomic(args.out / "unknown_tool_feedback.json", {"run": str(args.run), "splits": report})


if __name__ == "__main__":
    main()
