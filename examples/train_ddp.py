"""MENTOR GRPO through the real calculator agent on one process or several (Accelerate DDP), with the same global
batch: a run on N processes reproduces the single-process run up to floating-point rounding.

```bash
python examples/train_ddp.py prepare runs/ddp                   # tiny student, SFT warm start, references
python examples/train_ddp.py train runs/ddp --name single       # one process
accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
    --main_process_port 29600 examples/train_ddp.py train runs/ddp --name ddp      # two processes, gloo on CPU
```

``--multi_gpu`` is Accelerate's torchrun launcher; with ``use_cpu=True`` in the config the processes join a gloo
group on CPU (``accelerate launch --cpu`` alone starts a single process unless MPI is set up). ``prompts_per_step``
is the global batch, split among the processes.

Rollouts sample, and a batch's sampled tokens depend on which rows are generated together and on the RNG state, both
of which change with the process layout. `per_group_seeded` therefore rolls out each group of ``num_generations``
rollouts of one prompt on its own, from a seed fixed by (seed, step, task): every group samples the same tokens on
any layout, so the runs can be compared step by step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import zlib
from pathlib import Path

import torch
from accelerate import PartialState
from langchain.agents import create_agent

from mentor_agents.demo.calculator import TOOLS, ScriptedCalculatorTeacher, make_tasks
from mentor_agents.integrations.langgraph.recording import record
from mentor_agents.integrations.langgraph.rollouts import graph_rollout_fn
from mentor_agents.references import build_references, load_references, save_references
from mentor_agents.from_scratch import make_tiny_student
from mentor_agents.student import load_student
from mentor_agents.traces import TraceStore
from mentor_agents.rollouts import RolloutFn
from mentor_agents.training import TrainConfig, grpo, merge, sft

SYSTEM = "Use the tools."
TOOL_NAMES = ("add", "multiply")


def agent(model):
    return create_agent(model, [t for t in TOOLS if t.name in TOOL_NAMES], system_prompt=SYSTEM)


def config(out: Path, **overrides) -> TrainConfig:
    base = dict(output_dir=str(out), method="mentor", max_new_tokens=40, max_turns=3, sft_lr=1e-2, sft_steps=48,
                lr=2e-3, beta=0.0, steps=3, prompts_per_step=2, num_generations=4, seed=0, use_cpu=True)
    return TrainConfig(**{**base, **overrides})


def per_group_seeded(rollout_fn: RolloutFn, num_generations: int, seed: int) -> RolloutFn:
    """``rollout_fn`` run once per group of ``num_generations`` consecutive references (one prompt's group), each
    from the seed of (seed, call number, task id). TRL calls the rollout function once per step on every process,
    so the call number is the step on any layout."""
    calls = itertools.count()

    def rollout(references, model, tokenizer, cfg):
        step = next(calls)
        rollouts = []
        for start in range(0, len(references), num_generations):
            group = references[start:start + num_generations]
            if len({ref.task_id for ref in group}) != 1:
                raise ValueError(f"a process got a split group: {[ref.task_id for ref in group]}; make the "
                                 "per-process batch a multiple of num_generations")
            torch.manual_seed(zlib.crc32(f"{seed}/{step}/{group[0].task_id}".encode()))
            rollouts += rollout_fn(group, model, tokenizer, cfg)
        return rollouts

    return rollout


def prepare(out: Path, tasks: int = 32, sft_steps: int = 48) -> None:
    """A tiny student warm-started by a short SFT on scripted-teacher traces (so its rollouts differ in reward and
    GRPO has a gradient), and the reward references, in ``out``."""
    torch.set_num_threads(1)
    student = make_tiny_student(out / "tiny", seed=0)
    model, tokenizer = load_student(student)
    with torch.no_grad():  # a wider init lets the tied output layer leave the uniform distribution (tests/test_training)
        model.get_input_embeddings().weight.mul_(5)
    model.save_pretrained(student)
    problems = [t for t in make_tasks(6 * tasks, "train", seed=0)
                if t.metadata["tools"] in (["add"], ["multiply"]) and "(" not in t.input][:tasks]
    traces = record(agent(ScriptedCalculatorTeacher()), problems, TraceStore(out / "traces.jsonl"), progress=False)
    merge(sft(student, None, traces, config(out / "sft-run", sft_steps=sft_steps)), out / "student")
    save_references(build_references(traces), out / "references.jsonl")


def train(out: Path, name: str, **overrides) -> None:
    torch.set_num_threads(1)
    cfg = config(out / name, **overrides)
    seeded = per_group_seeded(graph_rollout_fn(agent(ScriptedCalculatorTeacher())), cfg.num_generations, cfg.seed)
    batches: list[int] = []

    def rollout_fn(references, *args):
        batches.append(len(references))
        return seeded(references, *args)

    result = grpo(str(out / "student"), None, load_references(out / "references.jsonl"), rollout_fn, cfg)
    state = PartialState()
    # Each process notes its share of the rollouts, so a launch that silently ran one process is caught.
    (out / name / f"rank{state.process_index}.json").write_text(json.dumps(
        {"processes": state.num_processes, "backend": state.backend, "rollouts_per_step": batches}))
    if state.is_main_process:
        steps = [{k: h[k] for k in ("step", "loss", "reward", "reward_std", "grad_norm") if k in h}
                 for h in result.metrics if "reward" in h]
        (out / name / "steps.json").write_text(json.dumps(steps, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["prepare", "train"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--name", default="run", help="subdirectory of OUT for this training run")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts-per-step", type=int, default=2, help="global, over all processes")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--sft-steps", type=int, default=48, help="SFT warm start of the student (prepare)")
    args = parser.parse_args()
    if args.stage == "prepare":
        prepare(args.out, sft_steps=args.sft_steps)
    else:
        train(args.out, args.name, steps=args.steps, prompts_per_step=args.prompts_per_step,
              num_generations=args.num_generations, lr=args.lr)


if __name__ == "__main__":
    main()
