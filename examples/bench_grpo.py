"""Benchmark: a GRPO step and an SFT step on the 12-tool calculator agent, with shared prefixes, without them, and
plain TRL ``GRPOTrainer(tools=...)`` with the same model, tools, batch, LoRA and token budget.

    OMP_NUM_THREADS=1 python examples/bench_grpo.py --quick                    # tiny student, one step, < 3 min
    flock /tmp/heavy.lock python examples/bench_grpo.py                        # tiny and SmolLM2-135M-Instruct

Variants (each in its own subprocess, so that each peak RSS is its own):
- ``grpo_shared``: this project's GRPO step (`mentor_agents.training.grpo`: rollouts through the real LangGraph agent,
  `SharedPrefixGRPOTrainer`), each group's prompt computed once in the loss and the reference forward;
- ``grpo_unshared``: the same step with ``SharedPrefixGRPOTrainer.share_prefix = False`` (TRL's log-prob path);
- ``grpo_trl``: plain TRL ``GRPOTrainer(tools=...)`` on the same twelve tools and system prompt, its own rollouts;
- ``sft_shared`` / ``sft_unshared``: one SFT step (`mentor_agents.training.sft`) on teacher conversations;
- ``*_checkpointing`` / ``*_bf16``: the shared steps with ``TrainConfig(gradient_checkpointing=True)`` or
  ``TrainConfig(bf16=True)`` (``--switches``; on by default, off with ``--quick``).

Reported per variant: CPU seconds per step (``time.process_time``, the whole process; the machine is shared, so
wall-clock ratios swing 2-3x), wall seconds, the rollout's share of both, peak RSS, and achieved FLOP/s of the step
(backbone matmuls, 2 x body parameters per token, x2 with backward; plus generation's LM head) against a measured fp32
matmul ceiling. Writes ``speedup_vs_unshared`` (unshared / shared GRPO CPU s), ``step_time_ratio_vs_trl`` (shared /
plain TRL GRPO CPU s) and ``sft_speedup_vs_unshared`` per student to examples/results/bench_grpo.json.

Baselines that would not fit in memory at the goal size (SmolLM2 unshared at 2 prompts x 4 generations needs about
30 GB) run at ``--baseline-prompts`` prompts; the shared step then also runs at that size, and the ratios compare
equal sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STUDENTS = {"tiny": "tiny", "smollm2-135m": "smollm2-135m-instruct"}
VARIANTS = ("grpo_shared", "grpo_unshared", "grpo_trl", "sft_shared", "sft_unshared",
            "grpo_shared_checkpointing", "grpo_shared_bf16", "sft_shared_checkpointing", "sft_shared_bf16")


# ------------------------------------------------------------------------------------------- one variant, in-process


class StepClock:
    """CPU and wall seconds of every optimiser step, and of the rollouts inside it; backbone FLOPs of each step."""

    def __init__(self, model):
        from transformers import TrainerCallback

        self.steps: list[dict] = []
        self.rollout_cpu = self.rollout_wall = self.flops = 0.0
        body = sum(p.numel() for n, p in model.base_model.named_parameters() if "embed" not in n)
        head = model.get_output_embeddings().weight.numel()
        model.base_model.register_forward_hook(lambda m, a, kw, out: self._count(kw, 2 * body), with_kwargs=True)
        model.get_output_embeddings().register_forward_hook(
            lambda m, a, out: setattr(self, "flops", self.flops + 2 * head * out.shape[:-1].numel()))
        clock = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock.rollout_cpu = clock.rollout_wall = clock.flops = 0.0
                clock.start = (time.process_time(), time.perf_counter())

            def on_step_end(self, args, state, control, **kwargs):
                cpu, wall = time.process_time() - clock.start[0], time.perf_counter() - clock.start[1]
                clock.steps.append({"cpu_s": cpu, "wall_s": wall, "rollout_cpu_s": clock.rollout_cpu,
                                    "rollout_wall_s": clock.rollout_wall, "gflop": clock.flops / 1e9})

        self.callback = Callback()

    def _count(self, kwargs, per_token: float) -> None:
        ids = kwargs.get("input_ids")
        self.flops += per_token * ids.numel() * (2 if torch.is_grad_enabled() else 1)

    def timed(self, fn):
        def wrapped(*args, **kwargs):
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.rollout_cpu += time.process_time() - cpu
                self.rollout_wall += time.perf_counter() - wall
        return wrapped


def calculator_data(work: Path, n: int):
    from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent, make_tasks
    from mentor_agents.integrations.langgraph.recording import record
    from mentor_agents.references import build_references
    from mentor_agents.traces import TraceStore

    tasks = [t for t in make_tasks(10 * n, "train") if len(t.metadata["tools"]) >= 2][:n]
    traces = record(build_agent(ScriptedCalculatorTeacher()), tasks, TraceStore(work / "traces.jsonl"),
                    progress=False)
    return traces, build_references(traces)


def run_variant(args) -> dict:
    from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent
    from mentor_agents.integrations.langgraph.rollouts import graph_rollout_fn
    from mentor_agents.training.prefix_sharing import SharedPrefixGRPOTrainer, SharedPrefixSFTTrainer
    from mentor_agents.student import find_packaged_gguf, load_student
    from mentor_agents.training import TrainConfig, grpo, sft

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix=f"bench-{args.run}-"))
    model_id = "tiny" if args.student == "tiny" else str(find_packaged_gguf(STUDENTS[args.student]))
    model, tokenizer = load_student(model_id, cache_dir=args.cache) if args.student == "tiny" else load_student(
        model_id)
    clock = StepClock(model)
    traces, references = calculator_data(work, 4 * args.prompts)
    config = TrainConfig(output_dir=str(work / "runs"), steps=args.steps, prompts_per_step=args.prompts,
                         num_generations=args.generations, max_new_tokens=args.max_new_tokens,
                         max_turns=args.max_turns, sft_steps=args.steps, sft_batch_size=args.sft_batch,
                         gradient_checkpointing=args.run.endswith("_checkpointing"), bf16=args.run.endswith("_bf16"))
    SharedPrefixGRPOTrainer.share_prefix = SharedPrefixSFTTrainer.share_prefix = "_shared" in args.run
    if args.run.startswith("sft"):
        sft(model, tokenizer, traces, config, output_dir=work / "sft", callbacks=[clock.callback])
    elif args.run == "grpo_trl":
        plain_trl(model, tokenizer, references, config, work, clock)
    else:
        # The unshared step is the path before prefix sharing: no KV reuse in the rollouts either.
        rollout_fn = clock.timed(graph_rollout_fn(build_agent(ScriptedCalculatorTeacher()),
                                                  reuse_kv=args.run != "grpo_unshared"))
        grpo(model, tokenizer, references, rollout_fn, config, output_dir=work / "grpo", callbacks=[clock.callback])
    steps = clock.steps
    return {
        "variant": args.run, "prompts": args.prompts, "generations": args.generations,
        "sft_batch": args.sft_batch if args.run.startswith("sft") else None, "steps": steps,
        "cpu_s": statistics.median(s["cpu_s"] for s in steps), "wall_s": statistics.median(s["wall_s"] for s in steps),
        "rollout_cpu_s": statistics.median(s["rollout_cpu_s"] for s in steps),
        "gflop": statistics.median(s["gflop"] for s in steps),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def plain_trl(model, tokenizer, references, config, work: Path, clock: StepClock) -> None:
    """Plain TRL ``GRPOTrainer(tools=...)``: the calculator's twelve tool functions and system prompt, TRL's own
    generation and tool loop; a length reward (the reward's cost is negligible next to the step)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from mentor_agents.demo.calculator import SYSTEM_PROMPT, TOOLS

    dataset = Dataset.from_list([{"prompt": [{"role": "system", "content": SYSTEM_PROMPT},
                                             {"role": "user", "content": ref.task_input}]} for ref in references])
    args = GRPOConfig(
        output_dir=str(work / "plain"), learning_rate=config.lr, max_steps=config.steps,
        per_device_train_batch_size=config.prompts_per_step * config.num_generations,
        num_generations=config.num_generations, max_completion_length=config.max_new_tokens,
        max_tool_calling_iterations=config.max_turns, temperature=config.temperature, beta=config.beta,
        loss_type=config.loss_type, logging_steps=1, report_to="none", seed=config.seed, use_cpu=True, bf16=False,
        gradient_checkpointing=False, save_strategy="no", lr_scheduler_type="constant", warmup_steps=0,
    )

    def length_reward(completions, **_):
        return [float(len(str(c))) for c in completions]

    trainer = GRPOTrainer(model=model, reward_funcs=length_reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=config.lora(), tools=[t.func for t in TOOLS],
                          callbacks=[clock.callback])
    trainer._generate = clock.timed(trainer._generate)
    trainer.train()


# ------------------------------------------------------------------------------------------------------- the driver


def matmul_gflops() -> float:
    """fp32 matmul throughput of one core (process time), the ceiling the FLOP/s figures are read against."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    start = time.process_time()
    for _ in range(20):
        a @ b
    return 20 * 2 * 1024 ** 3 / (time.process_time() - start) / 1e9


def spawn(student: str, variant: str, prompts: int, args, cache: Path) -> dict:
    command = [sys.executable, __file__, "--run", variant, "--student", student, "--prompts", str(prompts),
               "--generations", str(args.generations), "--max-new-tokens", str(args.max_new_tokens),
               "--max-turns", str(args.max_turns), "--steps", str(args.steps), "--sft-batch",
               str(args.sft_batch[student]), "--cache", str(cache)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRL_EXPERIMENTAL_SILENCE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        return {"variant": variant, "prompts": prompts, "error": f"exit {done.returncode}: "
                f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_student(student: str, args, cache: Path, ceiling: float, runs: dict) -> dict:
    """Runs the variants (those in ``--only``, when given) into ``runs`` and returns them with the ratios."""
    baseline = args.baseline_prompts.get(student, args.prompts)
    plan = {"grpo_shared": args.prompts, f"grpo_shared@{baseline}": baseline, "grpo_unshared": baseline,
            "grpo_trl": baseline, "sft_shared": args.prompts, "sft_unshared": args.prompts}
    if args.switches:
        plan.update({v: args.prompts for v in VARIANTS if v.endswith(("_checkpointing", "_bf16"))})
    for name, prompts in plan.items():
        if name == f"grpo_shared@{args.prompts}" or (args.only and name.split("@")[0] not in args.only):
            continue
        runs[name] = run = spawn(student, name.split("@")[0], prompts, args, cache)
        if "cpu_s" in run:
            run["gflop_per_cpu_s"] = run["gflop"] / run["cpu_s"]
            run["share_of_matmul_ceiling"] = run["gflop_per_cpu_s"] / ceiling
        print(f"{student:13s} {run['variant']:25s} x{run['prompts']}: " + (
            f"{run['cpu_s']:8.1f} CPU s/step (rollout {run['rollout_cpu_s']:6.1f}), wall {run['wall_s']:7.1f} s, "
            f"peak RSS {run['peak_rss_mb']:6.0f} MB, {run['gflop_per_cpu_s']:5.1f} GFLOP/s"
            if "cpu_s" in run else run["error"]), flush=True)
    result = {"runs": runs, "baseline_prompts": baseline}
    shared = runs.get(f"grpo_shared@{baseline}" if baseline != args.prompts else "grpo_shared", {})
    if all("cpu_s" in runs.get(k, {}) for k in ("grpo_unshared", "grpo_trl", "sft_shared", "sft_unshared")) \
            and "cpu_s" in shared:
        unshared = runs["grpo_unshared"]
        result.update(
            speedup_vs_unshared=unshared["cpu_s"] / shared["cpu_s"],
            step_time_ratio_vs_trl=shared["cpu_s"] / runs["grpo_trl"]["cpu_s"],
            sft_speedup_vs_unshared=runs["sft_unshared"]["cpu_s"] / runs["sft_shared"]["cpu_s"],
            loss_part_speedup_vs_unshared=(unshared["cpu_s"] - unshared["rollout_cpu_s"])
            / (shared["cpu_s"] - shared["rollout_cpu_s"]),
        )
        print(f"{student}: GRPO {result['speedup_vs_unshared']:.2f}x less CPU than unshared (loss part alone "
              f"{result['loss_part_speedup_vs_unshared']:.2f}x), {result['step_time_ratio_vs_trl']:.2f}x plain TRL; "
              f"SFT {result['sft_speedup_vs_unshared']:.2f}x", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny student alone")
    parser.add_argument("--students", nargs="+", choices=list(STUDENTS), default=list(STUDENTS))
    parser.add_argument("--prompts", type=int, default=2, help="prompts per GRPO step")
    parser.add_argument("--baseline-prompts", type=int, default=1,
                        help="prompts per step of SmolLM2's unshared and plain TRL steps (memory)")
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="per model turn")
    parser.add_argument("--max-turns", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="measured steps per variant (the median is reported)")
    parser.add_argument("--sft-batch", type=int, default=2, help="conversations per SFT step")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_grpo.json"))
    parser.add_argument("--switches", action=argparse.BooleanOptionalAction, default=None,
                        help="also the shared steps with gradient checkpointing and with bf16 autocast (default: "
                        "on, off with --quick)")
    parser.add_argument("--only", nargs="+", choices=VARIANTS, help="run these variants and keep the file's others")
    parser.add_argument("--run", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--student", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.run:
        print(json.dumps(run_variant(args)))
        return
    students = ["tiny"] if args.quick else args.students
    args.steps = 1 if args.quick else args.steps
    args.switches = not args.quick if args.switches is None else args.switches
    args.baseline_prompts = {"smollm2-135m": args.baseline_prompts}
    args.sft_batch = {"tiny": 4, "smollm2-135m": args.sft_batch}
    cache = Path(tempfile.mkdtemp(prefix="bench-grpo-cache-"))
    ceiling = matmul_gflops()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results = {"students": {k: v for k, v in results.get("students", {}).items() if "runs" in v}}
    results.update(machine=platform.platform(), threads=1, matmul_fp32_gflops=ceiling)
    print(f"fp32 matmul ceiling: {ceiling:.0f} GFLOP/s (one core)")
    for student in students:
        load = os.getloadavg()
        runs = results["students"].get(student, {}).get("runs", {}) if args.only else {}
        results["students"][student] = res = bench_student(student, args, cache, ceiling, runs)
        res["load_average"] = [load, os.getloadavg()]
        res["settings"] = {"prompts": args.prompts, "generations": args.generations,
                           "max_new_tokens": args.max_new_tokens, "max_turns": args.max_turns, "steps": args.steps,
                           "sft_batch": args.sft_batch[student], "beta": 0.001, "lora_r": 16,
                           "agent": "calculator, 12 tools", "torch_threads": 1}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
