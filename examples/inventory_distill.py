"""`distill` on a stateful agent, as a new user runs it: the SQLite inventory agent with write tasks, its own
database verifier, and a fresh database per run through ``environment``.

```bash
OMP_NUM_THREADS=1 python examples/inventory_distill.py                       # tiny student, a few minutes on 2 cores
OMP_NUM_THREADS=1 flock /tmp/heavy.lock python examples/inventory_distill.py --student smollm2   # SmolLM2-135M
```

The teacher is the inventory agent's scripted stand-in (`ScriptedInventoryTeacher`). Tasks: read tasks (numeric
answers, `NumericMatch`) and write tasks ("Place an order of ..."), judged by `inventory.order_placed`, which reads
the run's own database (``state``). Every recorded task, GRPO rollout and evaluation run gets its own copy of the
database (`inventory.environment`); student evaluation runs are capped at ``max_turns`` and stopped on loops.
Writes ``examples/results/inventory_distill[-<student>].json`` (every number, CPU and wall time) and ``.md`` (the
report `distill` wrote; its plots stay in the run directory).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from dataclasses import asdict
from pathlib import Path

from mentor_agents import DistillConfig, TrainConfig, distill
from mentor_agents.demo import inventory
from mentor_agents.from_scratch import FITTED_FULL_MODULES, FittedStudentConfig
from mentor_agents.student import find_packaged_gguf

RESULTS = Path(__file__).parent / "results"

CONFIGS = {
    "tiny": DistillConfig(
        train=TrainConfig(sft_lr=2e-3, sft_steps=150, sft_batch_size=16, lora_r=32, lora_alpha=64,
                          lora_target_modules=["o_proj"], lora_modules_to_save=FITTED_FULL_MODULES,
                          lr=5e-5, steps=8, prompts_per_step=4, num_generations=4, max_turns=4, max_new_tokens=48,
                          max_completion_length=384, beta=0.0),
        fitted=FittedStudentConfig(vocab_size=2000, hidden_size=128, num_layers=2, num_heads=4, initializer_range=0.1),
        baselines=("sft",), concurrency=4, timeout_s=120.0,
    ),
    # One SmolLM2 GRPO step of 1 prompt x 4 rollouts peaks near 16 GB on CPU (README, "Memory on CPU").
    "smollm2": DistillConfig(
        train=TrainConfig(sft_lr=2e-4, sft_steps=40, sft_batch_size=2, lr=2e-5, steps=6, prompts_per_step=1,
                          num_generations=4, max_turns=4, max_new_tokens=64, max_completion_length=768, beta=0.0),
        baselines=("sft",), concurrency=2, timeout_s=300.0,
    ),
}


def tasks(n_read: int, n_write: int, seed: int):
    """Read and write tasks of one seed, interleaved."""
    read, write = inventory.make_tasks(n_read, seed=seed), inventory.make_write_tasks(n_write, seed=seed)
    return [t for pair in zip(read, write) for t in pair] + read[len(write):] + write[len(read):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--train", type=int, default=40, help="training tasks (half read, half write)")
    parser.add_argument("--test", type=int, default=16, help="held-out tasks (half read, half write)")
    parser.add_argument("--run-dir", default="runs/inventory_distill")
    args = parser.parse_args()

    train = tasks(args.train // 2, args.train - args.train // 2, seed=0)
    seen = {t.input for t in train}
    test = [t for t in tasks(args.test, args.test, seed=1) if t.input not in seen][:args.test]
    teacher = inventory.ScriptedInventoryTeacher()
    db = Path(args.run_dir + f"-{args.student}") / "inventory.sqlite"
    student = "fitted" if args.student == "tiny" else str(find_packaged_gguf("smollm2-135m-instruct"))

    cpu, wall = time.process_time(), time.perf_counter()
    result = distill(inventory.build_agent(teacher, db), train, eval_tasks=test, student=student,
                     method="sft+mentor", config=CONFIGS[args.student], run_dir=db.parent,
                     environment=inventory.environment(teacher, db))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    numbers = {
        "student": args.student,
        "tasks": {"train": len(train), "test": len(test),
                  "write_tasks": {"train": sum(t.verifier is inventory.order_placed for t in train),
                                  "test": sum(t.verifier is inventory.order_placed for t in test)}},
        "evaluation": result.metrics["evaluation"],
        "teacher": result.metrics["teacher"],
        "config": asdict(CONFIGS[args.student]),
        "cpu_s": round(time.process_time() - cpu, 1),
        "wall_s": round(time.perf_counter() - wall, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
    }
    name = "inventory_distill" + ("" if args.student == "tiny" else f"-{args.student}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(numbers, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(
        f"# `examples/inventory_distill.py --student {args.student}`\n\n"
        f"CPU {numbers['cpu_s']} s, wall {numbers['wall_s']} s, peak RSS {numbers['peak_rss_gb']} GB.\n\n"
        + "\n".join(line for line in result.report.splitlines() if not line.startswith("![")) + "\n")
    print(result.report)
    print(f"CPU {numbers['cpu_s']} s, wall {numbers['wall_s']} s, peak RSS {numbers['peak_rss_gb']} GB; "
          f"written to {RESULTS / name}.json/.md")


if __name__ == "__main__":
    main()
