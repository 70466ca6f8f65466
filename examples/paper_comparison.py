"""Does MENTOR beat SFT and sparse RL here? Untrained student vs SFT vs SFT+sparse GRPO vs SFT+MENTOR GRPO vs
SFT+MENTOR-ablation GRPO (plus a short MENTOR and sparse GRPO from the untrained student), in domain, on two graded
out-of-domain splits, in another agent and on BFCL, over seeds, with paired bootstrap intervals (issue 14).

```bash
OMP_NUM_THREADS=1 python examples/paper_comparison.py --quick --out /tmp/smoke           # every stage, tiny student
OMP_NUM_THREADS=1 python examples/paper_comparison.py --sweep                            # recipe grid on the dev split
OMP_NUM_THREADS=1 python examples/paper_comparison.py --seeds 0 &                         # one process per core:
OMP_NUM_THREADS=1 python examples/paper_comparison.py --seeds 1 &                         # seeds share one results dir
python examples/paper_comparison.py --report-only                                         # tables from the record
```
The launch plan with its CPU-hour estimate is ``examples/results/mentor_comparison/README.md``. The old, small run
(``examples/results/paper_comparison/``) was made by an earlier version of this script.

Teachers (both served over an OpenAI-compatible HTTP endpoint and recorded through `OpenAITeacher`):
- **A**: the calculator agent's scripted expert (solves every multi-step task), served in this process.
- **B** (opt-in, ``--teacher-b-url/--teacher-b-model``): any OpenAI-compatible endpoint, recorded with the lenient
  text tool-call parse, on single-step calculator tasks; Qwen2.5-Coder-1.5B-Instruct under llama.cpp is the one
  measured to work (how to start it: reference/teacher-endpoints.md, and the old version of this docstring).

Only verified-correct teacher traces that call at least one tool become references and SFT data.
Methods (``--methods``): ``untrained``; ``sft``; ``sft+sparse``, ``sft+mentor`` and ``sft+<ablation>`` (GRPO with
the sparse / MENTOR / ablated MENTOR reward, each starting from this seed's one merged SFT model: what
`train(TrainConfig(method="sft+sparse" | "sft+mentor", reward=...))` does, without training SFT again per method);
``mentor`` and ``sparse`` (GRPO from the untrained student, ``Scale.short_rl_steps`` steps: at 135M the student
never calls a tool, every group has one reward, ``frac_reward_zero_std`` is 1 and there is no gradient).
Every GRPO method of every seed uses the one ``--recipe``; ``--sweep`` picks it on the calculator ``dev`` split
(teacher A, seed 0: ``sft+mentor`` per grid cell, scored on dev only, never on test) and writes ``sweep.md``.

Splits, the same seeded tasks for every model of a seed: calculator ``test`` (in domain, held out),
``ood_phrasing`` (new wording, tool combinations seen in train), ``ood_tools`` (tool combinations never trained on),
``inventory`` (the SQLite agent, a domain never trained on), and BFCL ``simple_python``, ``multiple`` and
``irrelevance`` (seed 0 sample). BFCL is scored through the OpenAI-compatible server of `mentor serve` (the same
`create_app` around the student chat model, here in this process): only structured ``tool_calls`` count.

Resumable: each (teacher, seed) has ``<out>/runs/teacher<T>-seed<S>/`` whose ``state.json`` records every finished
stage with its process CPU seconds; training resumes from its last checkpoint, evaluations task by task. Two
processes may share ``--out`` when they run different seeds (or teachers): each writes only its own run directory,
and the report files are rewritten under a file lock, atomically. ``<out>/results.json`` is the record: the report
is built from it, each stage replaced by the same stage of a run directory, so it outlives the run directories
(copy the committed one into a new ``--out`` to add runs to it). ``--methods untrained`` alone calls no teacher, so
it can run on a teacher's splits after that teacher's endpoint is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from mentor_agents.bfcl import evaluate_bfcl
from mentor_agents.distill import DistillConfig, Run, RunState, read_metrics, write_json_atomic
from mentor_agents.evaluation import (Metrics, bootstrap_ci, paired_bootstrap, plot_success,
                                      save_figure)
from mentor_agents.files import write_text_atomic
from mentor_agents.messages import tool_names
from mentor_agents.prefix_cache import ConcurrentBatcher
from mentor_agents.demo import calculator, inventory
from mentor_agents.integrations.langgraph.adapter import LangGraphAdapter
from mentor_agents.integrations.openai.server import create_app, running_server
from mentor_agents.integrations.openai.teacher import OpenAITeacher
from mentor_agents.references import summarize
from mentor_agents.student import find_packaged_gguf
from mentor_agents.traces import ModelStep, Trace, read_jsonl
from mentor_agents.training import TrainConfig, method_dir

OUT = Path(__file__).parent / "results" / "mentor_comparison"
BFCL_SAMPLE = str(Path(__file__).parents[1] / "tests" / "data" / "bfcl-sample")
"""A few BFCL items per category, for ``--quick`` when bfcl-eval is not installed."""
BFCL_SPLITS = ("simple_python", "multiple", "irrelevance")
CALCULATOR_SPLITS = ("test", "ood_phrasing", "ood_tools")
SPLITS = (*CALCULATOR_SPLITS, "inventory", *BFCL_SPLITS)
# Greedy evaluation runs of a split go 8 at a time, their model calls decoded as one batch (ConcurrentBatcher): the
# same tokens as one by one up to float rounding, and a batch of 8 costs about 2-3 calls alone.
EVAL_BATCH = 8
METHODS = ("untrained", "sft", "sft+sparse", "sft+mentor", "sft+no_match", "mentor", "sparse")
PAIRS = (("sft+mentor", "sft"), ("sft+mentor", "sft+sparse"))
"""The paired differences of the issue, per split, pooled over seeds."""


@dataclass(frozen=True)
class Scale:
    """Task counts and the SFT budget; ``student`` is ``smollm2`` (SmolLM2-135M-Instruct) or ``tiny``."""

    train: int
    dev: int
    test: int
    ood_phrasing: int
    ood_tools: int
    inventory: int
    bfcl: int
    """Items per BFCL category."""
    sft_steps: int
    sft_batch_size: int
    short_rl_steps: int
    """GRPO steps of ``mentor`` and ``sparse`` from the untrained student."""
    max_new_tokens: int
    max_turns: int
    student: str = "smollm2"


@dataclass(frozen=True)
class Recipe:
    """The GRPO settings fixed for every method and seed (chosen with ``--sweep`` on the dev split)."""

    lr: float = 1e-4
    num_generations: int = 8
    temperature: float = 1.0
    steps: int = 50
    prompts_per_step: int = 1

    @classmethod
    def parse(cls, text: str, base: Recipe | None = None) -> Recipe:
        """``"lr=1e-4,num_generations=8"`` over ``base`` (the defaults when None)."""
        types = {f.name: f.type for f in fields(cls)}
        values = {}
        for part in filter(None, text.split(",")):
            key, _, value = part.partition("=")
            if key not in types:
                raise ValueError(f"unknown recipe key {key!r}; choose from {', '.join(types)}")
            values[key] = float(value) if types[key] == "float" else int(value)
        return replace(base or cls(), **values)


SCALES = {
    # Every method and split once, on the tiny student, in minutes: keeps the script from rotting.
    "quick": Scale(train=8, dev=2, test=2, ood_phrasing=2, ood_tools=2, inventory=2, bfcl=1, sft_steps=2,
                   sft_batch_size=2, short_rl_steps=1, max_new_tokens=24, max_turns=4, student="tiny"),
    # Issue 14: >= 50 test, >= 50 OOD in two graded splits, >= 40 inventory, >= 30 per BFCL category.
    "full": Scale(train=160, dev=20, test=50, ood_phrasing=30, ood_tools=30, inventory=40, bfcl=30, sft_steps=60,
                  sft_batch_size=4, short_rl_steps=10, max_new_tokens=128, max_turns=4),
}
RECIPES = {"quick": Recipe(lr=2e-3, num_generations=2, temperature=1.0, steps=1, prompts_per_step=1),
           "full": Recipe()}
# Temperatures above 1: after SFT the student is nearly deterministic (entropy ~0.005 nats/token), and at 1.0 all
# 8 rollouts of a group were the same correct run (frac_reward_zero_std 1, no gradient); 1.5 gives mixed groups.
SWEEP = {"lr": (2e-4, 5e-5), "num_generations": (8, 4), "temperature": (1.5, 2.0)}


def train_config(scale: Scale, recipe: Recipe, seed: int) -> TrainConfig:
    """LoRA on the student: a higher SFT rate than full fine-tuning, no KL term (a second forward pass on CPU),
    activations recomputed in the backward (a GRPO step of 8 rollouts peaked at 10 GB without), and the loss in
    micro-batches of 512 padded tokens (at 1024, a group of 8 rollouts of up to 127 tokens ran as one and the step
    peaked at 10.2 GB; the loss and gradients do not depend on it)."""
    return TrainConfig(
        sft_lr=5e-4 if scale.student != "tiny" else 1e-2, sft_steps=scale.sft_steps,
        sft_batch_size=scale.sft_batch_size, lr=recipe.lr, steps=recipe.steps,
        prompts_per_step=recipe.prompts_per_step, num_generations=recipe.num_generations,
        temperature=recipe.temperature, max_turns=scale.max_turns, max_new_tokens=scale.max_new_tokens,
        max_completion_length=768, beta=0.0, lora_r=16, lora_alpha=32, save_steps=2, seed=seed,
        gradient_checkpointing=True, micro_batch_tokens=512,
    )


def method_config(name: str, base: TrainConfig, scale: Scale) -> TrainConfig:
    """The GRPO config of ``name``: ``sft+<reward>`` from the SFT model, or ``mentor``/``sparse`` from scratch."""
    if name in ("mentor", "sparse"):
        return replace(base, method=name, steps=scale.short_rl_steps)
    reward = name.removeprefix("sft+")
    return replace(base, method="sft+sparse" if reward == "sparse" else "sft+mentor",
                   reward="mentor" if reward == "sparse" else reward)


# ---------------------------------------------------------------------------------------------------------- tasks


def single_step(tasks: list, n: int) -> list:
    """The first ``n`` tasks solved by one tool call (teacher B does not chain calls)."""
    picked = [t for t in tasks if len(t.metadata.get("tools") or ()) == 1]
    if len(picked) < n:
        raise ValueError(f"only {len(picked)} single-step tasks among {len(tasks)}; draw more")
    return picked[:n]


def make_splits(teacher: str, scale: Scale, seed: int) -> dict[str, list]:
    """Every calculator and inventory split of one seed (the same for every model of the seed)."""
    draw = calculator.make_tasks
    in_domain = {"train": scale.train, "test": scale.test, "dev": scale.dev + scale.train // 10}
    if teacher == "A":
        splits = {name: draw(n, name, seed) for name, n in in_domain.items()}
    else:
        splits = {name: single_step(draw(5 * n, name, seed), n) for name, n in in_domain.items()}
    train = {t.input for t in splits["train"]}
    splits["dev"] = [t for t in splits["dev"] if t.input not in train][:scale.dev]
    splits["ood_phrasing"] = draw(scale.ood_phrasing, "ood_phrasing", seed)
    splits["ood_tools"] = draw(scale.ood_tools, "ood", seed)
    splits["inventory"] = inventory.make_tasks(scale.inventory, seed=seed)
    return splits


# ----------------------------------------------------------------------------------------------------- one run


class Comparison:
    """One (teacher, seed) run directory (a `Run`): tasks, teacher traces, trained methods and their evaluations."""

    def __init__(self, out: Path, teacher_name: str, teacher_model: Any, seed: int, scale: Scale, recipe: Recipe,
                 bfcl_data: str | None = None):
        self.out, self.teacher_name, self.seed, self.scale = out, teacher_name, seed, scale
        self.bfcl_data = bfcl_data
        self.teacher = teacher_model
        # Runs are cut after max_turns model turns (two supersteps each), as in training.
        turns = {"recursion_limit": 2 * scale.max_turns}
        student = "fitted" if scale.student == "tiny" else str(find_packaged_gguf("smollm2-135m-instruct"))
        self.run = Run(out / "runs" / f"teacher{teacher_name}-seed{seed}", LangGraphAdapter(
            calculator.build_agent(calculator.ScriptedCalculatorTeacher()).with_config(turns)), student,
            DistillConfig(concurrency=4, timeout_s=600, seed=seed))
        # One database per run directory: two processes (seeds) never share one.
        self.inventory = LangGraphAdapter(inventory.build_agent(
            inventory.ScriptedInventoryTeacher(), db_path=self.run.dir / "inventory.sqlite").with_config(turns))
        self.student_config = DistillConfig(concurrency=EVAL_BATCH, timeout_s=900, seed=seed)
        self.train_config = train_config(scale, recipe, seed)
        write_json_atomic(self.run.dir / "config.json", {"scale": asdict(scale), "recipe": asdict(recipe),
                                                         "train_config": asdict(self.train_config)})

    # --- stages

    def prepare(self, teacher: bool = True, teacher_evals: bool = True) -> None:
        """Tasks; with ``teacher``, also the teacher's traces and references, and with ``teacher_evals`` the
        teachers' runs on every split (the eval references)."""
        state = self.run.state
        if "tasks" not in state.done:
            state.save_tasks(make_splits(self.teacher_name, self.scale, self.seed))
        if not teacher:
            self.run.splits = state.load_tasks()
            return
        cpu = time.process_time()
        traces, references = self.run.record(self.teacher, state.load_tasks())
        # Teacher B sometimes describes a call in prose and still ends with the right number: not a run to imitate.
        summary = summarize(traces)
        self.run.traces = [t for t in traces if t.tool_calls]
        self.run.references = [r for r in references if r.teacher_calls]
        if "teacher:train" not in state.done:
            state.mark("teacher:train", success=summary.success_rate, traces=summary.traces,
                       references=len(self.run.references), verdicts=summary.verdicts,
                       calls_per_task=summary.calls_per_task, parsed_from_text=summary.parsed_from_text,
                       cpu_s=time.process_time() - cpu)
        if not teacher_evals:
            return
        for split in (*CALCULATOR_SPLITS, "dev", "inventory"):
            # The inventory references come from its own scripted expert (the calculator teacher has no such tools).
            if split == "inventory":
                self.run.evaluate_split("inventory expert", None, split, self.inventory, reference=True)
            else:
                self.run.evaluate_split("teacher", self.teacher, split, reference=True)

    def evaluate(self, name: str, model: Any, tokenizer: Any, splits: tuple[str, ...] = SPLITS) -> None:
        """``model`` in the calculator and inventory agents, and on BFCL through the `mentor serve` app."""
        model.eval()
        for split in splits:
            if f"eval:{name}:{split}" in self.run.state.done:
                continue
            cpu = time.process_time()
            if split in BFCL_SPLITS:
                self.evaluate_bfcl(name, split, model, tokenizer)
            else:
                adapter = self.inventory if split == "inventory" else self.run.adapter
                batcher = ConcurrentBatcher(model, tokenizer.pad_token_id, max_batch=EVAL_BATCH)
                chat = adapter.student_model(batcher, tokenizer, prefix_cache=None,
                                             max_new_tokens=self.scale.max_new_tokens, model_name=f"student/{name}")
                self.run.evaluate_split(name, chat, split, adapter, config=self.student_config)
            info = self.run.state.info(f"eval:{name}:{split}")
            log(f"[{self.run.dir.name}] {name} on {split}: success {info['success']:.0%} ({info['tasks']} tasks, "
                f"{time.process_time() - cpu:.0f} CPU s)")
            write_outputs(self.out, plots=False)

    def evaluate_bfcl(self, name: str, category: str, model: Any, tokenizer: Any) -> None:
        cpu = time.process_time()
        chat = self.run.adapter.student_model(model, tokenizer, max_new_tokens=self.scale.max_new_tokens,
                                              model_name=f"student/{name}")
        with running_server(create_app(chat, f"student/{name}")) as url:
            chat_fn = served_chat_fn(url, f"student/{name}", self.run.dir / "bfcl" / f"{method_dir(name)}.jsonl")
            report = evaluate_bfcl(chat_fn, [category], self.scale.bfcl, seed=0, data_dir=self.bfcl_data)
        valid = [float(r.valid) for r in report.results]
        self.run.state.mark(f"eval:{name}:{category}", tasks=len(valid), success=sum(valid) / max(1, len(valid)),
                            success_ci=bootstrap_ci(valid), outcomes={r.id: float(r.valid) for r in report.results},
                            calls_per_task=sum(len(r.calls) for r in report.results) / max(1, len(valid)),
                            cpu_s=time.process_time() - cpu)

    def train(self, key: str, config: TrainConfig) -> tuple[Any, Any]:
        """Train (or resume, or load) one method into ``train/<key>/`` (`Run.train`); returns model and tokenizer."""
        cpu = time.process_time()
        if f"train:{key}" not in self.run.state.done:
            log(f"[{self.run.dir.name}] training {key} ({config.method}, reward {config.reward_fn.name})")
        result = self.run.train(key, config)
        log(f"[{self.run.dir.name}] {key} ready in {time.process_time() - cpu:.0f} CPU s")
        return result.model, result.tokenizer

    def run_methods(self, methods: list[str], teacher_evals: bool = True) -> None:
        """Train and evaluate ``methods``. ``untrained`` alone calls no teacher, and without ``teacher_evals`` the
        teacher only records its traces; either way the students' tool-set match and argument accuracy against the
        teacher's runs are then not scored (the report shows neither)."""
        self.prepare(teacher=methods != ["untrained"], teacher_evals=teacher_evals)
        for name in methods:
            if all(f"eval:{name}:{s}" in self.run.state.done for s in SPLITS):
                continue
            if name == "untrained":
                model, tokenizer = self.run.base()
            else:
                config = replace(self.train_config, method="sft") if name == "sft" else \
                    method_config(name, self.train_config, self.scale)
                model, tokenizer = self.train(name, config)
            self.evaluate(name, model, tokenizer)
            write_outputs(self.out)

    def sweep(self, grid: dict[str, tuple]) -> None:
        """``sft+mentor`` per recipe of ``grid`` from the seed's SFT model, scored on the dev split only."""
        self.prepare()
        # The SFT start on dev first: the baseline a recipe must beat.
        if "eval:sft:dev" not in self.run.state.done:
            model, tokenizer = self.train("sft", replace(self.train_config, method="sft"))
            self.evaluate("sft", model, tokenizer, splits=("dev",))
            write_sweep(self.out, self.run.state)
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            recipe = dict(zip(keys, values))
            name = "sweep/" + ",".join(f"{k}={v}" for k, v in recipe.items())
            if f"eval:{name}:dev" in self.run.state.done:
                continue
            model, tokenizer = self.train(name, replace(method_config("sft+mentor", self.train_config, self.scale),
                                                        **recipe))
            self.evaluate(name, model, tokenizer, splits=("dev",))
            write_sweep(self.out, self.run.state)


def served_chat_fn(url: str, model: str, cache_path: Path):
    """A BFCL ``chat_fn`` through an OpenAI-compatible server: only the reply's structured ``tool_calls`` count
    (text that merely looks like a call is a plain answer). Answers are appended to ``cache_path``, so a killed
    run resumes item by item."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="not-needed", timeout=900)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache = {}
    if cache_path.exists():
        for line in cache_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                cache[row["key"]] = row["calls"]

    def chat_fn(messages: list[dict], tools: list[dict]) -> list[dict]:
        key = hashlib.sha256(json.dumps([messages, tools], sort_keys=True).encode()).hexdigest()
        if key not in cache:
            reply = client.chat.completions.create(model=model, messages=messages, tools=tools, temperature=0.0)
            message = reply.choices[0].message
            cache[key] = [{"name": c.function.name, "arguments": c.function.arguments}
                          for c in message.tool_calls or []]
            with open(cache_path, "a") as f:
                f.write(json.dumps({"key": key, "calls": cache[key], "text": (message.content or "")[:500]}) + "\n")
        return cache[key]

    return chat_fn


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


# ------------------------------------------------------------------------------------------------------ results


MODEL_ORDER = ["teacher", "inventory expert", *METHODS]
DYNAMICS = ("reward", "frac_reward_zero_std", "rollout/tool_call_rate", "rollout/with_invalid_call")
"""Per GRPO step: ``rollout/tool_call_rate`` is the valid-call rate (rollouts with at least one parsed call of an
offered tool), ``rollout/with_invalid_call`` (``rollout/invalid_call_rate`` in logs written before it was renamed) the
rollouts with at least one call the parser rejected."""


def dynamics(rows: list[dict]) -> list[dict]:
    """The GRPO steps of a ``metrics.jsonl``."""
    return [{"rollout/with_invalid_call": r.get("rollout/invalid_call_rate"), **r} for r in rows if "reward" in r]


def collect(out: Path) -> dict[str, Any]:
    """Every finished stage (sweep cells apart): those of ``out/results.json``, the record that outlives the run
    directories, each replaced by the same stage of a run directory under ``out/runs``."""
    record = out / "results.json"
    runs: dict[str, Any] = json.loads(record.read_text())["runs"] if record.exists() else {}
    for state in sorted((out / "runs").glob("*/state.json")):
        done = json.loads(state.read_text())["done"]
        run = runs.setdefault(state.parent.name, {"teacher_train": None, "evaluation": {}, "endings": {},
                                                  "training": {}})
        run["teacher_train"] = done.get("teacher:train") or run["teacher_train"]
        for key, info in done.items():
            kind, _, rest = key.partition(":")
            if kind not in ("eval", "train") or rest.startswith("sweep/"):
                continue
            if kind == "eval":
                model, split = rest.rsplit(":", 1)
                if split == "dev":  # the sweep's baseline, not a result
                    continue
                run["evaluation"].setdefault(model, {})[split] = info
                if split not in BFCL_SPLITS:
                    run["endings"].setdefault(model, {})[split] = run_endings(
                        state.parent / "eval" / f"{method_dir(model)}-{split}.jsonl", set(info["outcomes"]))
                continue
            steps = dynamics(read_metrics(state.parent / info["metrics"]))  # stored relative to the run
            logged = sorted({k for s in steps for k in s})
            run["training"][rest] = {"method": info.get("method"), "reward": info.get("reward"),
                                     "cpu_s": info["cpu_s"], "steps": len(steps),
                                     "curves": {k: [s.get(k) for s in steps] for k in logged
                                                if k in DYNAMICS or k.startswith("reward/")}}
    for run in runs.values():
        cpu: dict[str, float] = {}
        for model, by_split in run["evaluation"].items():
            cpu[model] = sum(info.get("cpu_s", 0.0) for info in by_split.values())
        for key, trained in run["training"].items():
            cpu[key] = cpu.get(key, 0.0) + trained["cpu_s"]
        run["cpu_hours"] = {m: s / 3600 for m, s in cpu.items()}
    return runs


ENDINGS = ("correct", "wrong after valid calls", "unknown tool", "malformed call", "no call", "cut off")


def run_ending(trace: Trace) -> str:
    """How one agent run ended, the first that applies of `ENDINGS`. A call the student's parser rejects ends the
    run: the graph's tool node never sees it, so the student gets no error message to correct it by."""
    if trace.verdict == "correct":
        return "correct"
    if trace.stopped is not None:
        return "cut off"
    offered = tool_names(trace.tools)
    rejected = [c for s in trace.steps if isinstance(s, ModelStep) for c in s.output.get("invalid_tool_calls") or []]
    if any(c.get("name") and c["name"] not in offered for c in rejected):
        return "unknown tool"
    if rejected:
        return "malformed call"
    return "wrong after valid calls" if trace.tool_calls else "no call"


def run_endings(path: Path, task_ids: set[str]) -> dict[str, int]:
    """`run_ending` counts over the evaluated tasks recorded in ``path``."""
    traces, _ = read_jsonl(path, Trace, skip_invalid=True)
    counts = dict.fromkeys(ENDINGS, 0)
    for trace in traces:
        if trace.task_id in task_ids:
            counts[run_ending(trace)] += 1
    return counts


def seed_of(run_name: str) -> int:
    return int(run_name.rsplit("-seed", 1)[1])


def paired_rows(runs: dict[str, Any], teacher: str) -> list[str]:
    """Markdown rows: per split, each pair's difference pooled over seeds (paired on (seed, task id)) with its
    paired bootstrap CI, and the per-seed differences beside it."""
    rows = []
    for a, b in PAIRS:
        for split in SPLITS:
            pooled_a, pooled_b, per_seed = {}, {}, []
            for name, run in sorted(runs.items()):
                if not name.startswith(teacher + "-"):
                    continue
                ev = run["evaluation"]
                if split not in ev.get(a, {}) or split not in ev.get(b, {}):
                    continue
                oa, ob = ev[a][split]["outcomes"], ev[b][split]["outcomes"]
                seed = seed_of(name)
                pooled_a.update({(seed, k): v for k, v in oa.items()})
                pooled_b.update({(seed, k): v for k, v in ob.items()})
                per_seed.append(f"seed {seed}: {paired_bootstrap(oa, ob).difference:+.0%}")
            if not per_seed:
                continue
            d = paired_bootstrap(pooled_a, pooled_b)
            rows.append(f"| {a} − {b} | {split} | {d.difference:+.1%} [{d.ci[0]:+.1%}, {d.ci[1]:+.1%}] | {d.pairs} | "
                        f"{d.a:.0%} vs {d.b:.0%} | {'; '.join(per_seed)} |")
    return rows


def success_rows(runs: dict[str, Any], teacher: str) -> tuple[list[str], dict[tuple[str, str], Metrics]]:
    """Markdown rows per (method, seed): success [CI] (n) per split and CPU hours; and the seed-pooled cells."""
    rows, pooled = [], {}
    names = [n for n in sorted(runs) if n.startswith(teacher + "-")]
    models = sorted({m for n in names for m in runs[n]["evaluation"]}, key=lambda m: (MODEL_ORDER + [m]).index(m))
    for model in models:
        for name in names:
            ev, cells = runs[name]["evaluation"].get(model, {}), []
            for split in SPLITS:
                info = ev.get(split)
                cells.append("–" if info is None else
                             f"{info['success']:.0%} [{info['success_ci'][0]:.0%}–{info['success_ci'][1]:.0%}] "
                             f"(n={info['tasks']})")
            hours = runs[name]["cpu_hours"].get(model)
            rows.append(f"| {model} | {seed_of(name)} | " + " | ".join(cells) +
                        f" | {'–' if hours is None else f'{hours:.2f}'} |")
        for split in SPLITS:
            outcomes = [v for n in names for v in runs[n]["evaluation"].get(model, {}).get(split, {})
                        .get("outcomes", {}).values()]
            if outcomes:
                mean = sum(outcomes) / len(outcomes)
                pooled[(model, split)] = Metrics(len(outcomes), mean, bootstrap_ci(outcomes), None, None,
                                                 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    return rows, pooled


def ending_rows(runs: dict[str, Any], teacher: str) -> list[str]:
    """Markdown rows per (method, agent split): how the runs ended (`ENDINGS`), counts summed over seeds."""
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for name in sorted(runs):
        if name.startswith(teacher + "-"):
            for model, by_split in runs[name]["endings"].items():
                for split, counts in by_split.items():
                    total = totals.setdefault((model, split), dict.fromkeys(ENDINGS, 0))
                    for ending, n in counts.items():
                        total[ending] += n
    keys = sorted(totals, key=lambda key: ((MODEL_ORDER + [key[0]]).index(key[0]), SPLITS.index(key[1])))
    return [f"| {model} | {split} | {sum(totals[model, split].values())} | "
            + " | ".join(str(totals[model, split][e]) for e in ENDINGS) + " |" for model, split in keys]


def dynamics_rows(runs: dict[str, Any], teacher: str, out: Path, plots: bool) -> list[str]:
    """Markdown rows per GRPO run: first/last-5-step means of the reward and the zero-std and valid-call rates."""
    rows = []
    for name in sorted(runs):
        if not name.startswith(teacher + "-"):
            continue
        for key, t in runs[name]["training"].items():
            curves = t["curves"]
            if not curves.get("reward"):
                continue
            span = lambda k: "–" if not curves.get(k) else (  # noqa: E731
                f"{mean5(curves[k][:5]):.2f} → {mean5(curves[k][-5:]):.2f}")
            rows.append(f"| {key} | {seed_of(name)} | {t['reward']} | {t['steps']} | {span('reward')} | "
                        f"{span('frac_reward_zero_std')} | {span('rollout/tool_call_rate')} | "
                        f"{span('rollout/with_invalid_call')} | {t['cpu_s'] / 3600:.2f} |")
            if plots:
                plot_dynamics(curves, out / "plots" / f"dynamics-{name}-{method_dir(key)}.png",
                              f"{key} ({name})")
    return rows


def mean5(xs: list) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def plot_dynamics(curves: dict[str, list], path: Path, title: str) -> Path:
    """Reward with its components; the share of zero-variance groups; valid- and invalid-call rates; per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(1, len(curves["reward"]) + 1))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    panels = ([k for k in curves if k == "reward" or k.startswith("reward/")], ["frac_reward_zero_std"],
              ["rollout/tool_call_rate", "rollout/with_invalid_call"])
    titles = ("reward and components", "groups with zero reward std", "rollouts with a valid / an invalid call")
    for ax, keys, label in zip(axes, panels, titles):
        for key in keys:
            if curves.get(key):
                ax.plot(steps, [float("nan") if v is None else v for v in curves[key]], label=key, marker=".",
                        linewidth=2 if key == "reward" else 1)
        ax.set_xlabel("GRPO step")
        ax.set_ylim(-0.05, 1.15)
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def write_outputs(out: Path, plots: bool = True) -> None:
    """``results.json``, ``results.md`` and (with ``plots``) the plots, from the run directories, under a lock: two
    processes may share ``out``."""
    with FileLock(str(out / ".report.lock")):
        runs = collect(out)
        write_json_atomic(out / "results.json", {
            "meta": {"machine": platform.platform(), "threads": torch.get_num_threads(),
                     "written": time.strftime("%Y-%m-%d %H:%M:%S")},
            "runs": runs})
        parts = ["# MENTOR vs SFT vs sparse RL: results", "",
                 "Generated by `examples/paper_comparison.py` from `results.json` and the run directories "
                 "(`--report-only` rewrites it). "
                 "Cells: success [95% bootstrap CI] (tasks). Paired differences: pooled over seeds, paired on "
                 "(seed, task id), paired bootstrap 95% CI. CPU hours: process CPU time of the method's training "
                 "and evaluations (an `sft+*` method's SFT is counted once, under `sft`).", ""]
        for teacher in sorted({name.split("-seed")[0] for name in runs}):
            rows, pooled = success_rows(runs, teacher)
            parts += [f"## {teacher}", "", "| method | seed | " + " | ".join(SPLITS) + " | CPU h |",
                      "|---|---|" + "---|" * (len(SPLITS) + 1), *rows, ""]
            parts += ["### Paired differences", "", "| difference | split | pooled [95% CI] | pairs | success "
                      "| per seed |", "|---|---|---|---|---|---|", *paired_rows(runs, teacher), ""]
            parts += ["### How the agent runs ended (seeds summed)", "",
                      ("A call the student's parser rejects (an unknown tool name, or a call it cannot parse) ends "
                       "the run: it never reaches the graph's tool node."), "",
                      "| model | split | runs | " + " | ".join(ENDINGS) + " |", "|---|---|---|" + "---|" * len(ENDINGS),
                      *ending_rows(runs, teacher), ""]
            parts += ["### GRPO dynamics (mean of the first 5 → last 5 steps)", "",
                      "| method | seed | reward | steps | reward | frac_reward_zero_std | valid-call rate | "
                      "invalid-call rate | CPU h |", "|---|---|---|---|---|---|---|---|---|",
                      *dynamics_rows(runs, teacher, out, plots), ""]
            if pooled:
                if plots:
                    plot_success(pooled, out / "plots" / f"success-{teacher}.png")
                parts += [f"![success by method and split, {teacher}, seeds pooled](plots/success-{teacher}.png)",
                          ""]
        notes = out / "notes.md"
        write_text_atomic(out / "results.md", "\n".join(parts) + "\n" + (notes.read_text() if notes.exists() else ""))


def swept_recipe(out: Path) -> str:
    """The recipe cell of ``out/sweep.json`` with the best dev success; on a tie, the one whose GRPO reward rose
    most (first 5 -> last 5 steps), since a recipe that leaves the student where it was compares nothing."""
    cells = [c for c in json.loads((out / "sweep.json").read_text())["cells"] if c["recipe"].startswith("lr=")]
    if not cells:
        raise SystemExit(f"{out / 'sweep.json'} has no finished recipe cell; run --sweep first")
    best = max(cells, key=lambda c: (c["dev_success"], c["reward_last5"] - c["reward_first5"]))
    return best["recipe"]


def write_sweep(out: Path, run: RunState) -> None:
    """``sweep.md`` / ``sweep.json``: per recipe cell, dev success [CI], the GRPO reward first → last and CPU."""
    cells = []
    for key, info in run.done.items():
        if key.startswith("eval:sweep/") and key.endswith(":dev"):
            name = key[len("eval:"):-len(":dev")]
            trained = run.info(f"train:{name}")
            steps = dynamics(read_metrics(trained["metrics"]))
            rewards = [s["reward"] for s in steps]
            zero = [s.get("frac_reward_zero_std", 0.0) for s in steps]
            cells.append({"recipe": name.removeprefix("sweep/"), "dev_success": info["success"],
                          "dev_ci": info["success_ci"], "dev_tasks": info["tasks"],
                          "reward_first5": mean5(rewards[:5]), "reward_last5": mean5(rewards[-5:]),
                          "frac_reward_zero_std": mean5(zero), "cpu_s": trained["cpu_s"] + info.get("cpu_s", 0.0)})
    cells.sort(key=lambda c: -c["dev_success"])
    if "eval:sft:dev" in run.done:
        info = run.info("eval:sft:dev")
        cells.insert(0, {"recipe": "sft (no GRPO: the start of every cell)", "dev_success": info["success"],
                         "dev_ci": info["success_ci"], "dev_tasks": info["tasks"], "reward_first5": float("nan"),
                         "reward_last5": float("nan"), "frac_reward_zero_std": float("nan"),
                         "cpu_s": info.get("cpu_s", 0.0)})
    write_json_atomic(out / "sweep.json", {"run": run.dir.name, "split": "dev", "cells": cells})
    lines = [f"# Recipe sweep ({run.dir.name}, `sft+mentor`, scored on the calculator dev split only)", "",
             "| recipe | dev success [95% CI] (n) | reward first 5 → last 5 | frac_reward_zero_std | CPU h |",
             "|---|---|---|---|---|"]
    lines += [f"| {c['recipe']} | {c['dev_success']:.0%} [{c['dev_ci'][0]:.0%}–{c['dev_ci'][1]:.0%}] "
              f"(n={c['dev_tasks']}) | {c['reward_first5']:.2f} → {c['reward_last5']:.2f} | "
              f"{c['frac_reward_zero_std']:.2f} | {c['cpu_s'] / 3600:.2f} |".replace("nan → nan", "–")
              .replace("| nan |", "| – |") for c in cells]
    write_text_atomic(out / "sweep.md", "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------------- main


def teachers(stack: contextlib.ExitStack, args: argparse.Namespace) -> list[tuple[str, Any]]:
    """Teacher A served in this process, and teacher B at its endpoint when given."""
    found = []
    if not args.skip_teacher_a:
        app = create_app(calculator.ScriptedCalculatorTeacher(), "scripted-calculator-expert", max_concurrency=4)
        url = stack.enter_context(running_server(app))
        found.append(("A", OpenAITeacher(base_url=url, model="scripted-calculator-expert",
                                         api_key="not-needed").chat_model()))
    if args.teacher_b_url:
        found.append(("B", OpenAITeacher(base_url=args.teacher_b_url, model=args.teacher_b_model,
                                         api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",
                                         lenient=True, temperature=0.0, timeout_s=300).chat_model()))
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny student, every method and split, minutes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        help="untrained, sft, sft+sparse, sft+mentor, sft+<ablation> (no_match, f1, overlap), "
                             "mentor, sparse")
    parser.add_argument("--recipe", default="", help="GRPO recipe over the scale's, e.g. lr=1e-4,num_generations=8,"
                                                     "temperature=1.0,steps=50,prompts_per_step=1; the word sweep "
                                                     "stands for the best cell of OUT/sweep.json (sweep,steps=50)")
    parser.add_argument("--sweep", action="store_true", help=f"run the recipe grid {SWEEP} on the dev split "
                                                             "(teacher A, seed 0) and write sweep.md; nothing else")
    parser.add_argument("--bfcl-data", help="BFCL_v4_*.json folder (default: the installed bfcl-eval wheel)")
    parser.add_argument("--teacher-b-url", help="OpenAI-compatible endpoint of teacher B (e.g. llama.cpp)")
    parser.add_argument("--teacher-b-model", default="qwen-teacher")
    parser.add_argument("--skip-teacher-a", action="store_true")
    parser.add_argument("--skip-teacher-evals", action="store_true",
                        help="record the teacher's traces but do not run it on the eval splits: for adding methods "
                             "to a run whose teacher evaluation results.json already holds")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    for name in args.methods:
        if name not in METHODS and not (name.startswith("sft+") and name[4:] in ("no_match", "f1", "overlap")):
            parser.error(f"unknown method {name!r}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        write_outputs(args.out)
        return
    scale_name = "quick" if args.quick else "full"
    recipe_text = args.recipe.replace("sweep", swept_recipe(args.out)) if "sweep" in args.recipe.split(",") \
        else args.recipe
    scale, recipe = SCALES[scale_name], Recipe.parse(recipe_text, RECIPES[scale_name])
    grid = {"lr": (1e-3, 2e-3)} if args.quick else SWEEP
    bfcl_data = args.bfcl_data or (BFCL_SAMPLE if args.quick else None)
    cpu = time.process_time()
    with contextlib.ExitStack() as stack:
        for name, teacher in teachers(stack, args):
            if args.sweep:
                if name == "A":
                    Comparison(args.out, "A", teacher, 0, scale, recipe, bfcl_data).sweep(grid)
                    write_outputs(args.out)
                continue
            for seed in args.seeds:
                log(f"teacher {name}, seed {seed}, {scale_name}, recipe {recipe}")
                comparison = Comparison(args.out, name, teacher, seed, scale, recipe, bfcl_data)
                comparison.run_methods(args.methods, teacher_evals=not args.skip_teacher_evals)
                write_outputs(args.out)
    log(f"done in {time.process_time() - cpu:.0f} CPU s")


if __name__ == "__main__":
    main()
