"""Benchmark: what bf16 saves in `mentor demo` on this CPU, fp32 against bf16, side by side in one process.

    OMP_NUM_THREADS=1 python examples/bench_demo_precision.py

- **SFT step**: one step of the demo's SFT (`DEMO_CONFIG`: 8 teacher conversations of the calculator agent, LoRA in
  the top 15 layers of SmolLM2-135M-Instruct) with ``TrainConfig(bf16=False)`` and ``bf16=True`` (autocast). The
  step's CPU is the difference between a 3-step and a 1-step run, halved, so loading and setup drop out.
- **Greedy decoding**: the evaluation's work, 8 held-out questions after the agent's 1,190-token prompt (system
  prompt and 12 tool schemas), as one batch: CPU per decoding step over 32 new tokens (median of 3, interleaved),
  by the SFT student (the 3-step run's adapter) as the evaluation had it before (LoRA unmerged, fp32), merged, and
  merged in bf16 (`DistillConfig.eval_dtype`); with how many of the 8 rows give the same tokens as the first.
- **Waiting for stragglers**: the demo's evaluation of that student (merged, bf16) on 16 held-out problems, 8 runs
  at a time, with `ConcurrentBatcher` waiting 0.05 s and 0.3 s for calls to join a batch: CPU and batch sizes.

Needs a CPU with native bf16 (AVX512-BF16 or AMX). Prints a table and writes
examples/results/bench_demo_precision.json.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, TOOLS, SYSTEM_PROMPT, build_agent, make_tasks
from mentor_agents.demo.run import DEMO_CONFIG, demo_student
from mentor_agents.distill import Run, adapter_for
from mentor_agents.integrations.langgraph.recording import record
from mentor_agents.prefix_cache import ConcurrentBatcher
from mentor_agents.student import load_student, native_bf16
from mentor_agents.traces import TraceStore
from mentor_agents.training import TrainResult, load_trained, sft

OUT = Path(__file__).parent / "results" / "bench_demo_precision.json"


def sft_cpu(student: str, traces: list, bf16: bool, steps: int, work: Path) -> tuple[float, TrainResult]:
    """CPU seconds of a whole `sft` call of ``steps`` steps, and its result."""
    config = replace(DEMO_CONFIG.train, bf16=bf16, sft_steps=steps, output_dir=str(work / f"sft-{bf16}-{steps}"),
                     save_steps=1000)
    start = time.process_time()
    result = sft(student, None, traces, config)
    return time.process_time() - start, result


def decode(model, tokenizer, questions: list[str], new_tokens: int) -> tuple[float, list[list[int]]]:
    """CPU seconds of one greedy decoding step of a batch, one row per question (a run of ``new_tokens`` tokens less
    a run of one, over ``new_tokens - 1``: the prompts' prefill drops out, as it does in the evaluation, which
    computes the shared prompt once), and the generated ids."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    tools = [convert_to_openai_tool(t) for t in TOOLS]
    prompts = [tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM_PROMPT},
                                              {"role": "user", "content": q}], tools=tools,
                                             add_generation_prompt=True, tokenize=False) for q in questions]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    cpu = []
    for n in (1, new_tokens):
        start = time.process_time()
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        cpu.append(time.process_time() - start)
    return (cpu[1] - cpu[0]) / (new_tokens - 1), out[:, batch["input_ids"].shape[1]:].tolist()


def evaluation(model, tokenizer, wait_s: float, work: Path) -> dict:
    """CPU seconds and batch sizes of the demo's evaluation of ``model`` on 16 held-out problems."""
    run = Run(work / f"eval-{wait_s}", adapter_for(build_agent(ScriptedCalculatorTeacher())), demo_student(),
              DEMO_CONFIG)
    run.record(ScriptedCalculatorTeacher(), {"train": make_tasks(2, "train"), "test": make_tasks(16, "test", seed=0)})
    run.evaluate_split("teacher", ScriptedCalculatorTeacher(), "test", reference=True)
    batcher = ConcurrentBatcher(model, tokenizer.pad_token_id, max_batch=DEMO_CONFIG.eval_batch_size, wait_s=wait_s)
    chat = run.adapter.student_model(batcher, tokenizer, prefix_cache=None,
                                     max_new_tokens=DEMO_CONFIG.train.max_new_tokens)
    start = time.process_time()
    metrics = run.evaluate_split("student", chat, "test")
    return {"cpu_s": round(time.process_time() - start, 1), "success": metrics.success,
            "batch_sizes": dict(sorted(batcher.batch_sizes.items()))}


def main() -> None:
    if not native_bf16():
        raise SystemExit("this CPU has no native bf16 (AVX512-BF16 or AMX); bf16 would be emulated")
    student = demo_student()
    work = Path(tempfile.mkdtemp(prefix="bench_precision-"))
    traces = record(build_agent(ScriptedCalculatorTeacher()), make_tasks(24, "train", seed=0),
                    TraceStore(work / "traces.jsonl"), progress=False)
    result: dict = {"threads": torch.get_num_threads(), "cpu": os.cpu_count(), "sft_step_cpu_s": {},
                    "decode_cpu_s": {}}
    for bf16 in (False, True):
        (one, _), (three, trained) = sft_cpu(student, traces, bf16, 1, work), sft_cpu(student, traces, bf16, 3, work)
        result["sft_step_cpu_s"]["bf16" if bf16 else "fp32"] = round((three - one) / 2, 2)

    unmerged, tokenizer = load_trained(trained)
    merged = copy.deepcopy(unmerged).merge_and_unload()
    students = {"LoRA unmerged, fp32": unmerged, "merged, fp32": merged,
                "merged, bf16": copy.deepcopy(merged).to(torch.bfloat16)}
    questions = [t.input for t in make_tasks(8, "test", seed=0)]
    outputs, samples = {}, {name: [] for name in students}
    for name, model in students.items():
        decode(model, tokenizer, questions[:1], 2)  # warm-up
    for _ in range(3):  # interleaved, so that a burst of load on the shared machine hits every variant alike
        for name, model in students.items():
            cpu, outputs[name] = decode(model, tokenizer, questions, 32)
            samples[name].append(cpu)
    result["decode_cpu_s"] = {name: statistics.median(cpu) for name, cpu in samples.items()}
    result["decode_cpu_s_samples"] = {name: [round(c, 3) for c in cpu] for name, cpu in samples.items()}
    first = outputs["LoRA unmerged, fp32"]
    result["decode_rows_as_unmerged_fp32"] = {name: sum(a == b for a, b in zip(ids, first))
                                              for name, ids in outputs.items()}
    result["evaluation_by_wait_s"] = {str(wait): evaluation(students["merged, bf16"], tokenizer, wait, work)
                                      for wait in (0.05, 0.3)}
    result["sft_step_ratio"] = round(result["sft_step_cpu_s"]["bf16"] / result["sft_step_cpu_s"]["fp32"], 2)

    print("| SFT step, 8 conversations | CPU s |\n|---|---|")
    for name, cpu in result["sft_step_cpu_s"].items():
        print(f"| {name} | {cpu:.1f} |")
    print("\n| greedy decoding step, batch of 8 (median of 3) | CPU s | rows as LoRA unmerged fp32 |\n|---|---|---|")
    for name, cpu in result["decode_cpu_s"].items():
        result["decode_cpu_s"][name] = round(cpu, 2)
        print(f"| {name} | {cpu:.2f} | {result['decode_rows_as_unmerged_fp32'][name]} of 8 |")
    print("\n| batcher wait | evaluation CPU s (16 problems) | batches (size: count) |\n|---|---|---|")
    for wait, row in result["evaluation_by_wait_s"].items():
        print(f"| {wait} s | {row['cpu_s']} | {row['batch_sizes']} |")
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
