"""`mentor demo`: distill the calculator agent into a tiny from-scratch student on a CPU, in minutes, offline.

```python
from mentor_agents.demo.run import run_demo

student = run_demo("runs/demo")          # scripted teacher, no network, no API key
print(student.report)
```

The student is ``"fitted"``: a small random Llama whose tokenizer `distill` fits to the teacher's own conversations
(`mentor_agents.from_scratch.make_fitted_student`). It is trained by SFT on the teacher traces, then by MENTOR GRPO
(``sft+mentor``), and compared with the teacher, the untrained student and SFT alone on held-out in-domain
(``test``) and out-of-domain (``ood``) calculator problems.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent, make_tasks
from mentor_agents.distill import DistillConfig, DistilledStudent, distill
from mentor_agents.from_scratch import FITTED_FULL_MODULES, FittedStudentConfig
from mentor_agents.training import TrainConfig

TRAIN_TASKS, TEST_TASKS, OOD_TASKS = 1000, 30, 14

DEMO_CONFIG = DistillConfig(
    train=TrainConfig(
        # SFT: every weight of the random student trains (LoRA on o_proj, the rest as modules_to_save).
        sft_lr=2e-3, sft_lr_scheduler="cosine", sft_steps=300, sft_batch_size=32,
        lora_r=32, lora_alpha=64, lora_target_modules=["o_proj"], lora_modules_to_save=FITTED_FULL_MODULES,
        # MENTOR GRPO after the SFT warm start. Every weight trains here, so the rate is far below the LoRA range:
        # 2e-4 took held-out success from 13% to 3% in 20 steps.
        lr=5e-5, steps=20, prompts_per_step=4, num_generations=8, max_turns=4, max_new_tokens=48,
        max_completion_length=256, beta=0.0, logging_steps=1,
    ),
    fitted=FittedStudentConfig(vocab_size=4000, hidden_size=256, num_layers=4, num_heads=8, initializer_range=0.1),
    baselines=("sft",),
    concurrency=4,
)
"""The settings `run_demo` uses, measured on a 2-core CPU (see examples/results/demo_run.md)."""

QUICK_CONFIG = replace(
    DEMO_CONFIG,
    train=replace(DEMO_CONFIG.train, sft_steps=10, sft_batch_size=8, steps=2, prompts_per_step=2, num_generations=2,
                  max_new_tokens=24, max_completion_length=96),
    fitted=replace(DEMO_CONFIG.fitted, hidden_size=32, num_layers=2, num_heads=4, vocab_size=1000),
)
"""A CI-sized run of every stage; too short to learn anything."""


def run_demo(run_dir: str | os.PathLike[str] = "runs/demo", teacher_base_url: str | None = None,
             teacher_model: str | None = None, seed: int = 0, quick: bool = False) -> DistilledStudent:
    """Distill the calculator agent (scripted teacher, or the OpenAI-compatible endpoint at ``teacher_base_url``)
    into a tiny student, print the comparison of teacher, untrained student, SFT and MENTOR on held-out
    in-domain and out-of-domain problems, then run the student inside the agent on one held-out question.

    ``quick`` runs every stage at a size fit for a test (minutes become seconds; the student learns nothing).
    Calling it again with the same ``run_dir`` resumes.
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
    n_train, n_test, n_ood = (24, 4, 3) if quick else (TRAIN_TASKS, TEST_TASKS, OOD_TASKS)
    test_tasks = make_tasks(n_test, "test", seed=seed)

    console.rule("[bold]mentor demo: distilling the calculator agent")
    console.print(f"teacher: {getattr(teacher, 'model_name', type(teacher).__name__)}; student: fitted (from scratch); "
                  f"{n_train} training problems, {n_test} held-out, {n_ood} out-of-domain; run dir {run_dir}")
    start = time.perf_counter()
    student = distill(
        agent, make_tasks(n_train, "train", seed=seed), student="fitted", method="sft+mentor",
        eval_tasks=test_tasks, ood_tasks=make_tasks(n_ood, "ood", seed=seed), config=config, run_dir=run_dir,
    )
    seconds = time.perf_counter() - start

    console.print(results_table(student))
    console.print(student.report.splitlines()[2])
    console.print(f"distilled in {seconds:.0f} s; report, metrics and plots in {Path(run_dir).resolve()}")

    console.rule("[bold]the distilled student inside the agent")
    question = test_tasks[0]
    state = student.swap_into().invoke({"messages": [{"role": "user", "content": question.input}]})
    console.print(f"[bold]user:[/bold] {question.input}  (expected {question.ground_truth})")
    for message in state["messages"][1:]:
        for call in getattr(message, "tool_calls", None) or []:
            console.print(f"[cyan]tool call:[/cyan] {call['name']}({call['args']})")
        if message.type == "tool":
            console.print(f"[green]tool result:[/green] {message.content}")
        elif message.type == "ai" and message.content:
            console.print(f"[bold]student:[/bold] {message.content}")
    return student


def results_table(student: DistilledStudent):
    """Held-out success per model and split, as a rich table."""
    from rich.table import Table

    evaluation = student.metrics["evaluation"]
    table = Table(title="held-out success (greedy decoding)")
    table.add_column("model")
    splits = [s for s in ("test", "ood") if any(key.endswith(f"|{s}") for key in evaluation)]
    for split in splits:
        table.add_column({"test": "in-domain (test)", "ood": "out-of-domain"}[split], justify="right")
    models = list(dict.fromkeys(key.split("|")[0] for key in evaluation))
    for model in models:
        cells = []
        for split in splits:
            m = evaluation.get(f"{model}|{split}")
            cells.append("–" if m is None else f"{m['success']:.0%} ({m['tasks']} tasks)")
        table.add_row({"sft+mentor": "MENTOR (sft+mentor)"}.get(model, model), *cells)
    return table
