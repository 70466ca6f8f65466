"""Benchmark: peak memory and CPU of one shared-prefix GRPO loss (forward and backward, gradient checkpointing on) on
SmolLM2-135M-Instruct, for one group of 8 rollouts whose lengths differ, with the group's rows computed all at once
(``micro_batch_tokens`` unbounded: the path before micro-batching) and in micro-batches (the default, 1024 padded
tokens).

    flock /tmp/heavy.lock python examples/bench_loss_memory.py            # SmolLM2: about 2 CPU min per case
    python examples/bench_loss_memory.py --quick                          # the tiny test student, seconds

A GRPO step of the issue-14 sweep (1 prompt x 8 rollouts, temperature 1.5) peaked at 13-14 GB when its group held a
4-turn rollout cut at the token limit and another of 4 turns. The cases here rebuild that shape with random tokens:
a 1,190-token prompt (the calculator agent's system prompt and tools, and a question) and 8 completions: ``long``
(the sweep's step 6: 700 and 350 tokens, the others 45-120), ``medium`` (the longest 320) and ``short`` (the longest
160, the others 45-120: small enough for the unbounded path to fit beside other jobs). The unbounded ``medium`` and
``long`` cases need more than 11 GB and run only with ``--all``. Each (case, budget) runs in its own subprocess, so each peak RSS (``ru_maxrss``) is its own; the loss and
the gradient norm are printed too (they agree between budgets up to fp32 rounding). Writes
examples/results/bench_loss_memory.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

CASES = {"long": (700, 350, 120, 60, 60, 50, 45, 45), "medium": (320, 160, 120, 60, 60, 50, 45, 45),
         "short": (160, 120, 80, 60, 60, 50, 45, 45)}
PROMPT = 1190
UNBOUNDED = 10**9


def run_case(student: str, case: str, budget: int) -> dict:
    from peft import get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from mentor_agents.student import find_packaged_gguf, load_student
    from mentor_agents.training import TrainConfig
    from mentor_agents.training.prefix_sharing import add_shared_prefix_head

    model, _ = load_student("tiny" if student == "tiny" else str(find_packaged_gguf("smollm2-135m-instruct")))
    add_fused_lm_head(model, temperature=1.5, outputs=("log_probs", "entropy"))
    add_shared_prefix_head(model, 1.5, ("log_probs", "entropy"), budget)
    torch.manual_seed(0)  # the same LoRA initialisation in every subprocess
    model = get_peft_model(model, TrainConfig().lora())
    model.gradient_checkpointing_enable({"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    lengths = CASES[case]
    prompt = torch.randint(5, model.config.vocab_size, (PROMPT,))
    ids = torch.zeros(len(lengths), PROMPT + max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :PROMPT + n] = torch.cat([prompt, torch.randint(5, model.config.vocab_size, (n,))])
        mask[i, :PROMPT + n] = 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :PROMPT] = -100
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    cpu, wall = time.process_time(), time.perf_counter()
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    out.loss.backward()
    grad_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None))
    return {"case": case, "lengths": lengths, "prompt": PROMPT,
            "micro_batch_tokens": None if budget == UNBOUNDED else budget,
            "loss": out.loss.item(), "grad_norm": grad_norm.item(), "cpu_s": time.process_time() - cpu,
            "wall_s": time.perf_counter() - wall, "peak_rss_gb_after_load": rss_before,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny test student")
    parser.add_argument("--all", action="store_true", help="also the unbounded long case (about 14 GB)")
    parser.add_argument("--run", nargs=3, metavar=("STUDENT", "CASE", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.run:
        print(json.dumps(run_case(args.run[0], args.run[1], int(args.run[2]))))
        return
    student = "tiny" if args.quick else "smollm2-135m"
    runs = [("short", UNBOUNDED), ("short", 1024), ("medium", 1024), ("long", 1024)]
    runs += [("medium", UNBOUNDED), ("long", UNBOUNDED)] * args.all
    results = []
    for case, budget in runs:
        line = subprocess.run([sys.executable, __file__, "--run", student, case, str(budget)], check=True,
                              capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(line))
        r = results[-1]
        print(f"{case:6} micro_batch_tokens={r['micro_batch_tokens']}: peak RSS {r['peak_rss_gb']:.2f} GB "
              f"(after loading {r['peak_rss_gb_after_load']:.2f}), {r['cpu_s']:.1f} CPU s, loss {r['loss']:.6f}, "
              f"grad norm {r['grad_norm']:.6f}", flush=True)
    if not args.quick:
        out = Path(__file__).parent / "results" / "bench_loss_memory.json"
        out.write_text(json.dumps({"student": student, "machine": platform.platform(), "threads": 1,
                                   "written": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results}, indent=2)
                       + "\n")


if __name__ == "__main__":
    main()
