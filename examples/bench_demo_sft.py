"""Benchmark: the CPU cost of one step of `mentor demo`'s SFT, adapters in the top 15 layers (`DEMO_CONFIG`) against
adapters in every layer (issue 14's SFT, which scored 84-88% on the demo's held-out problems over three seeds,
`demo_sft_sweep.md`), each in fp32 and with bf16 autocast, side by side in one process.

```bash
OMP_NUM_THREADS=1 python examples/bench_demo_sft.py      # about 10 CPU-minutes
```

A step is a batch of 4 teacher conversations of the calculator agent on SmolLM2-135M-Instruct. Its cost is a run of
5 steps less a run of 1, over 4 (loading and the first step drop out). Prints a table and writes
``examples/results/bench_demo_sft.json``. Needs a CPU with native bf16 for the bf16 rows.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent, make_tasks
from mentor_agents.demo.run import DEMO_CONFIG, demo_student
from mentor_agents.integrations.langgraph.recording import record
from mentor_agents.student import native_bf16
from mentor_agents.traces import TraceStore
from mentor_agents.training import sft

OUT = Path(__file__).parent / "results" / "bench_demo_sft.json"
LAYERS = {"top 15 layers": list(range(15, 30)), "every layer": None}


def step_cpu_s(student: str, traces: list, lora_layers: list[int] | None, bf16: bool, work: Path) -> float:
    """CPU seconds of one SFT step: (5 steps - 1 step) / 4."""
    cpu = []
    for steps in (1, 5):
        config = replace(DEMO_CONFIG.train, lora_layers=lora_layers, bf16=bf16, sft_steps=steps, save_steps=1000,
                         output_dir=str(work / f"{lora_layers is None}-{bf16}-{steps}"))
        start = time.process_time()
        sft(student, None, traces, config)
        cpu.append(time.process_time() - start)
    return round((cpu[1] - cpu[0]) / 4, 2)


def main() -> None:
    student = demo_student()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        traces = record(build_agent(ScriptedCalculatorTeacher()), make_tasks(40, "train"),
                        TraceStore(work / "traces.jsonl"), progress=False)
        rows = {}
        for name, layers in LAYERS.items():
            for bf16 in (False, True) if native_bf16() else (False,):
                label = f"{name}, {'bf16' if bf16 else 'fp32'}"
                rows[label] = step_cpu_s(student, traces, layers, bf16, work)
                print(f"{label}: {rows[label]} CPU s per step", flush=True)
    result = {"threads": torch.get_num_threads(), "batch": DEMO_CONFIG.train.sft_batch_size,
              "sft_step_cpu_s": rows}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print("| adapters, precision | CPU s per SFT step of 4 |\n|---|---|")
    for name, cpu in rows.items():
        print(f"| {name} | {cpu} |")


if __name__ == "__main__":
    main()
