"""Tune the GRPO stage of `mentor demo` on a dev split, never on its held-out test problems.

```bash
python examples/demo_grpo_tuning.py --out runs/demo_tuning            # resumes; about 25 CPU-minutes
```

One SFT student (the demo's `DEMO_CONFIG`, seed 0), then each candidate GRPO setting from it, each scored on 30
dev problems (`make_tasks(30, "dev")`, drawn apart from the demo's train and test problems). Writes
``examples/results/demo_grpo_tuning.json`` and the table in ``examples/results/demo_grpo_tuning.md``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent, make_tasks
from mentor_agents.demo.run import DEMO_CONFIG, TRAIN_TASKS, demo_student, reward_start_end
from mentor_agents.distill import Run, adapter_for, prepare_tasks, write_json_atomic
from mentor_agents.files import write_text_atomic

RESULTS = Path(__file__).parent / "results"
CANDIDATES = [dict(lr=5e-5, temperature=1.2), dict(lr=2e-4, temperature=1.2), dict(lr=5e-5, temperature=1.5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo_tuning")
    parser.add_argument("--dev", type=int, default=30)
    args = parser.parse_args()

    adapter = adapter_for(build_agent(ScriptedCalculatorTeacher()))
    teacher = None  # the agent's own model: the scripted teacher
    run = Run(args.out, adapter, demo_student(), DEMO_CONFIG)
    # The run's held-out split is the dev split here: the demo's test problems are never seen while tuning.
    splits = prepare_tasks(run.state, adapter, make_tasks(TRAIN_TASKS, "train", seed=0), None,
                           make_tasks(args.dev, "dev", seed=0), None, teacher, DEMO_CONFIG)
    run.record(teacher, splits)
    run.evaluate_split("teacher", teacher, "test", reference=True)
    rows = [row("sft (start of GRPO)", run, "sft", None)]
    for candidate in CANDIDATES:
        name = "grpo " + " ".join(f"{k}={v}" for k, v in candidate.items())
        run.train(name, replace(DEMO_CONFIG.train, method="sft+mentor", **candidate))
        rows.append(row(name, run, name, candidate))
        write_outputs(rows, DEMO_CONFIG)


def row(label: str, run: Run, name: str, candidate: dict | None) -> dict:
    result = run.train(name)  # trained already, or (sft) with the run's settings
    metrics = run.evaluate_split(name, run.student_model(result.model, result.tokenizer), "test")
    info = run.state.info(f"train:{name}")
    reward = reward_start_end(result.metrics, window=1)
    return {"setting": label, **(candidate or {}), "dev_success": metrics.success, "dev_tasks": metrics.tasks,
            "reward_first_step": reward and reward[0], "reward_last_step": reward and reward[1],
            "frac_reward_zero_std": [r.get("frac_reward_zero_std") for r in result.metrics if "reward" in r],
            "train_cpu_s": round(info.get("cpu_s", 0)),
            "eval_cpu_s": round(run.state.info(f"eval:{name}:test").get("cpu_s", 0))}


def write_outputs(rows: list[dict], config) -> None:
    write_json_atomic(RESULTS / "demo_grpo_tuning.json", {"config": {k: v for k, v in vars(config.train).items()
                                                                     if isinstance(v, (int, float, str))},
                                                          "rows": rows})
    lines = ["| setting | dev success | GRPO reward, first -> last step | frac_reward_zero_std | train CPU s | "
             "eval CPU s |", "|---|---|---|---|---|---|"]
    for r in rows:
        reward = "–" if r["reward_first_step"] is None else f"{r['reward_first_step']:.2f} -> {r['reward_last_step']:.2f}"
        lines.append(f"| {r['setting']} | {r['dev_success']:.0%} ({r['dev_tasks']}) | {reward} | "
                     f"{r['frac_reward_zero_std'] or '–'} | {r['train_cpu_s']} | {r['eval_cpu_s']} |")
    write_text_atomic(RESULTS / "demo_grpo_tuning.md", "# GRPO of `mentor demo`, tuned on a dev split\n\n"
                      + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
