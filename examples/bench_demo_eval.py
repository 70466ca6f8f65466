"""Benchmark: the demo's held-out evaluation with 8 runs decoded together (`DEMO_CONFIG`) against 16 and 32.

    OMP_NUM_THREADS=2 python examples/bench_demo_eval.py --adapter runs/demo/train/sft/sft/adapter

The evaluations are 5 of the 13 minutes of `mentor demo` at two threads. On a CPU a decoding step reads every weight
whatever the batch, so one batch of 32 rows may cost far less than four of 8. For each batch size, the trained
student (``--adapter``, merged, in the demo's evaluation dtype) runs in the agent on the demo's 32 held-out problems,
as many runs at once as the batch holds: process CPU and wall seconds, held-out success, and the batch sizes the
decoder saw. Greedy tokens may differ between batch sizes by float rounding, so success may too. Prints a table and
writes examples/results/bench_demo_eval.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent, make_tasks
from mentor_agents.demo.run import DEMO_CONFIG, TEST_TASKS, demo_student
from mentor_agents.distill import Run, adapter_for
from mentor_agents.training import load_trained

OUT = Path(__file__).parent / "results" / "bench_demo_eval.json"


def evaluation(model, tokenizer, batch: int, work: Path) -> dict:
    """CPU and wall seconds, success and decoder batch sizes of ``model`` on the demo's held-out problems, with
    ``batch`` runs at once decoded together."""
    config = replace(DEMO_CONFIG, concurrency=batch, eval_batch_size=batch)
    run = Run(work / f"batch{batch}", adapter_for(build_agent(ScriptedCalculatorTeacher())), demo_student(), config)
    run.record(ScriptedCalculatorTeacher(), {"train": make_tasks(2, "train"),
                                             "test": make_tasks(TEST_TASKS, "test", seed=0)})
    run.evaluate_split("teacher", ScriptedCalculatorTeacher(), "test", reference=True)
    chat = run.student_model(model, tokenizer)
    cpu, wall = time.process_time(), time.perf_counter()
    metrics = run.evaluate_split("student", chat, "test")
    return {"cpu_s": round(time.process_time() - cpu, 1), "wall_s": round(time.perf_counter() - wall, 1),
            "success": metrics.success, "batch_sizes": dict(sorted(chat.model.batch_sizes.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, required=True, help="a demo run's train/sft/sft/adapter")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    args = parser.parse_args()

    model, tokenizer = load_trained(args.adapter)
    work = Path(tempfile.mkdtemp(prefix="bench_demo_eval-"))
    result = {"threads": torch.get_num_threads(), "adapter": str(args.adapter),
              "by_batch": {str(b): evaluation(model, tokenizer, b, work) for b in args.batches}}
    print("| runs decoded together | CPU s | wall s | held-out success | decoder batches (size: count) |")
    print("|---|---|---|---|---|")
    for batch, row in result["by_batch"].items():
        print(f"| {batch} | {row['cpu_s']} | {row['wall_s']} | {row['success']:.0%} | {row['batch_sizes']} |")
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
