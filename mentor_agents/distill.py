"""`distill(agent, student=...)`: record the teacher, build references, train the student, evaluate, report.

`distill` drives a `Run`, the run directory and its stages (`Run.record`, `Run.train`, `Run.evaluate`,
`Run.report`), which `mentor record/train/eval` and examples/paper_comparison.py drive too; `Run.train` calls
`mentor_agents.training`. Every stage writes its files into the run directory and is skipped when they are already
there, so calling `distill` again with the same ``run_dir`` resumes where the last call stopped:

```
run_dir/
  state.json            finished stages (`RunState`)
  tasks.json            train / test / ood task splits (test and ood are never trained on)
  traces.jsonl          teacher traces on the train split
  references.jsonl      reward references (verified-correct traces)
  student/              the ``fitted`` student, when that is the student
  train/<method>/<stage>/   checkpoints, metrics.jsonl, adapter/ and train_config.json of each trained method
  train/sft/merged/     the SFT model merged into its base: where every sft+* method's GRPO starts
  eval/<model>-<split>.jsonl   runs of each model on each held-out split
  metrics.json  report.md  run.json  reward_curve.png  success.png
```
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
import weakref
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from filelock import FileLock

from mentor_agents.environment import EnvironmentFactory
from mentor_agents.errors import InvalidInputError, StageError
from mentor_agents.evaluation import Metrics, comparison_table, evaluate_traces, plot_reward_curve, plot_success
from mentor_agents.files import write_text_atomic
from mentor_agents.references import (
    RewardReference,
    build_references,
    load_references,
    save_references,
    self_consistency,
    summarize,
)
from mentor_agents.rollouts import ScoredRollout
from mentor_agents.tasks import Task, is_custom, task_from_dict, task_to_dict
from mentor_agents.traces import Trace, TraceStore

if TYPE_CHECKING:  # torch and transformers load on first use, so that `import mentor_agents` stays light
    from mentor_agents.from_scratch import FittedStudentConfig
    from mentor_agents.prefix_cache import ConcurrentBatcher
    from mentor_agents.rollouts import RolloutFn
    from mentor_agents.training import TrainConfig, TrainResult


class AgentAdapter(Protocol):
    """What `distill` needs from an agent framework; `mentor_agents.integrations.langgraph.LangGraphAdapter`
    implements it for LangGraph graphs."""

    agent: Any

    def teacher_model(self, teacher: Any) -> Any: ...

    def record(self, tasks: Sequence[Task], store: TraceStore, *, model: Any = None, samples: int = 1,
               concurrency: int = 4, timeout_s: float = 300, retries: int = 3, max_turns: int | None = None,
               stop_loops: bool = False) -> list[Trace]:
        """Run the ``samples`` runs of each task that ``store`` lacks, appending their traces; return every run of
        ``tasks``, one trace each, in task then sample order."""
        ...

    def synthesize_tasks(self, n: int, *, model: Any = None, seed: int = 0) -> list[Task]: ...

    def rollout_fn(self) -> RolloutFn: ...

    def student_model(self, model: Any, tokenizer: Any, **generation: Any) -> Any: ...

    def swap(self, chat_model: Any, graph: Any = None) -> Any: ...


def adapter_for(agent: Any, environment: EnvironmentFactory | None = None) -> AgentAdapter:
    """The integration that knows how to run ``agent`` (each run in a fresh ``environment`` when given)."""
    from mentor_agents.integrations.langgraph.adapter import LangGraphAdapter, is_langgraph_agent

    if is_langgraph_agent(agent):
        return LangGraphAdapter(agent, environment)
    raise TypeError(
        f"distill does not know how to run a {type(agent).__module__}.{type(agent).__name__}; "
        "pass a compiled LangGraph graph (langchain.agents.create_agent, or StateGraph(...).compile())"
    )


EVAL_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class DistillConfig:
    """Settings of the whole pipeline. ``train`` holds the training settings (its method is set by `distill`)."""

    train: TrainConfig = field(default_factory=lambda: _training().TrainConfig())
    synthetic_tasks: int = 64
    """How many tasks the teacher writes when none are given."""
    eval_fraction: float = 0.2
    """Share of the tasks split off as the held-out test set when ``eval_tasks`` is not given."""
    consistency_samples: int = 3
    """Teacher samples per task whose agreement decides the verdict when a task has no verifier."""
    baselines: tuple[str, ...] = ()
    """Other methods to train and compare in the report, e.g. ``("sft",)``."""
    concurrency: int = 4
    eval_batch_size: int = 1
    """Evaluation runs of a student whose model calls are decoded as one batch (greedy). On a CPU a batch of 8 costs
    about what 2-3 calls alone do; the tokens equal those of calls one by one up to float rounding. 1: one call at a
    time. The evaluation runs ``max(concurrency, eval_batch_size)`` tasks at once."""
    eval_dtype: str | None = None
    """Evaluate a copy of each student with its LoRA merged into the weights, in this dtype (``"float32"``,
    ``"bfloat16"``, ``"float16"``). On a CPU, SmolLM2-135M with adapters in 15 layers, a greedy decoding step of a
    batch of 8 took 0.44 CPU s unmerged in fp32, 0.36 merged in fp32 and 0.19 merged in bf16 (medians,
    examples/bench_demo_precision.py); a near-tie between tokens may go the other way. bf16 on a CPU needs native
    bf16 (AVX512-BF16 or AMX; checked). None: the students as trained, no copy."""
    timeout_s: float = 300.0
    seed: int = 0
    fitted: FittedStudentConfig = field(default_factory=lambda: _fitted_config())
    """Size of the ``student="fitted"`` model, built from scratch with a tokenizer fitted to the teacher traces."""

    def __post_init__(self) -> None:
        if self.eval_dtype not in (None, *EVAL_DTYPES):
            raise InvalidInputError(f"eval_dtype must be one of {', '.join(EVAL_DTYPES)} or None, got "
                                    f"{self.eval_dtype!r}")
        if self.eval_dtype == "bfloat16" and self.train.device_is_cpu and not _student().native_bf16():
            raise InvalidInputError("eval_dtype='bfloat16' needs a CPU with native bf16 (AVX512-BF16 or AMX); this "
                                    "one has neither")


@dataclass
class DistilledStudent:
    """The trained student: use it in the graph, evaluate it, save it; serve it with
    `mentor_agents.integrations.openai.serve_student` or, once saved, ``mentor serve``."""

    model: Any
    tokenizer: Any
    base_model: str
    method: str
    run_dir: Path
    adapter: AgentAdapter
    report: str = ""
    """The markdown report: the comparison table and what was used."""
    metrics: dict[str, Any] = field(default_factory=dict)
    max_turns: int = 5
    """Model-turn cap of an evaluation run (the training rollouts' ``max_turns``)."""
    adapter_dir: Path | None = None
    """The trained adapter, with ``train_config.json`` (what the model card states) beside it."""

    def as_chat_model(self, **generation: Any) -> Any:
        """The student as a chat model of the agent's framework (a LangChain chat model for LangGraph)."""
        return self.adapter.student_model(self.model, self.tokenizer, **generation)

    def swap_into(self, graph: Any = None) -> Any:
        """A copy of ``graph`` (default: the distilled agent) that runs on the student; ``graph`` is unchanged."""
        return self.adapter.swap(self.as_chat_model(), graph)

    def evaluate(self, tasks: Sequence[Task], name: str = "custom", timeout_s: float = 300) -> Metrics:
        """Run the student in the agent on ``tasks`` (bounded as in `distill`'s evaluation) and return its metrics."""
        store = TraceStore(self.run_dir / "eval" / f"student-{name}.jsonl")
        traces = self.adapter.record(list(tasks), store, model=self.as_chat_model(), timeout_s=timeout_s,
                                     **bounded_run(self.max_turns, teacher=False))
        return evaluate_traces(traces)

    def save(self, out_dir: str | os.PathLike[str], gguf: str | None = None) -> Path:
        """Write ``adapter/``, ``merged/`` and a model card to ``out_dir`` (see `mentor_agents.export`); with
        ``gguf`` (``"f16"``, ``"q8_0"`` or ``"q4_k_m"``) also ``gguf/<name>.gguf`` and an Ollama ``Modelfile``
        (see `mentor_agents.gguf_export`)."""
        from mentor_agents.export import ModelCard, export_student

        run_file = self.run_dir / "run.json"
        run = json.loads(run_file.read_text()) if run_file.exists() else {}
        card = ModelCard.from_stage(self.adapter_dir, self.base_model, self.method,
                                    evaluation=run.get("table") if run.get("method") == self.method else None)
        out = export_student(self.model, self.tokenizer, out_dir, card)
        if gguf is not None:
            from mentor_agents.gguf_export import export_gguf

            export_gguf(out / "merged", out / "gguf", gguf, system=getattr(self.adapter, "system_prompt", None))
        return out


def distill(
    agent: Any,
    tasks: Sequence[Task | str] | None = None,
    *,
    student: str = "phi-3-mini",
    teacher: Any = None,
    traces: str | os.PathLike[str] | TraceStore | None = None,
    method: str = "mentor",
    eval_tasks: Sequence[Task | str] | None = None,
    ood_tasks: Sequence[Task | str] | None = None,
    config: DistillConfig | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    environment: EnvironmentFactory | None = None,
) -> DistilledStudent:
    """Distill ``agent`` into ``student``.

    Args:
        agent: a compiled LangGraph graph whose model is the teacher (unless ``teacher`` is given).
        tasks: training requests (`Task`s or plain strings). Without them, tasks come from ``traces``, else the
            teacher writes ``config.synthetic_tasks`` requests from the agent's tools and system prompt.
        student: an alias (``phi-3-mini``, ``qwen2.5-0.5b-instruct`` ...), a hub id, a local model directory,
            a GGUF file, ``"fitted"`` (a small random model whose tokenizer is fitted to the teacher traces, built
            into ``<run_dir>/student``: trains on a CPU) or ``"tiny"`` (the generic tiny random Qwen2 of the tests).
        teacher: a chat model, an `OpenAITeacher`, or None to use the agent's own model.
        traces: an existing trace store (e.g. recorded by ``mentor proxy``) to train from.
        method: ``mentor`` (or any reward ablation via ``config.train.reward``), ``sft``, ``sparse``,
            ``sft+sparse``, ``sft+mentor``.
        eval_tasks: held-out in-domain tasks; by default ``config.eval_fraction`` of the tasks, split off first.
        ood_tasks: out-of-domain tasks, evaluated only.
        run_dir: where every stage's files go (default ``runs/distill``).
        resume: reuse the files of finished stages in ``run_dir``; the tasks passed must be those stored there.
        environment: builds a fresh `Environment` (graph on its own resources, state for the verifier) for each
            run: every recorded task, GRPO rollout and evaluation run (see `mentor_agents.environment`).
    """
    config = config or DistillConfig()
    adapter = adapter_for(agent, environment)
    run = Run(run_dir or "runs/distill", adapter, student, config, resume)
    teacher_model = adapter.teacher_model(teacher)
    splits = prepare_tasks(run.state, adapter, tasks, traces, eval_tasks, ood_tasks, teacher_model, config)
    run.record(teacher_model, splits, traces)
    results = {name: run.train(name) for name in dict.fromkeys([*config.baselines, method])}
    models = {"teacher": teacher_model, "untrained student": run.student_model(*run.base())}
    models.update({name: run.student_model(r.model, r.tokenizer) for name, r in results.items()})
    report = run.report(method, run.evaluate(models), {name: r.metrics for name, r in results.items()})
    final = results[method]
    return DistilledStudent(model=final.model, tokenizer=final.tokenizer, base_model=final.base_model,
                            method=method, run_dir=run.dir, adapter=adapter, adapter_dir=final.adapter_dir,
                            report=report,
                            metrics=json.loads((run.dir / "metrics.json").read_text()),
                            max_turns=config.train.max_turns)


# ------------------------------------------------------------------------------------------------------------ Run


class Run:
    """One run directory and its stages: `record` the teacher, `train` a method, `evaluate` models, `report`.

    Every stage is recorded in ``state.json`` (`RunState`) and skipped or resumed when the directory already has it:
    a trained method is loaded from its adapter, an interrupted training resumes from its last checkpoint, an
    evaluation from its last recorded task. The base student is loaded once per run.
    """

    def __init__(self, run_dir: str | os.PathLike[str], adapter: AgentAdapter, student: str,
                 config: DistillConfig | None = None, resume: bool = True):
        self.state = RunState.open(run_dir, resume)
        self.dir, self.adapter, self.student = self.state.dir, adapter, student
        self.config, self.resume = config or DistillConfig(), resume
        self.splits: dict[str, list[Task]] = {}
        self.traces: list[Trace] = []
        self.references: list[RewardReference] = []
        self.eval_references: dict[str, dict[str, RewardReference]] = {}
        """Per split, the references that `evaluate_split` scores against (from a ``reference=True`` model)."""
        self._base: tuple[Any, Any] | None = None
        self._trained: dict[str, TrainResult] = {}
        # By the id of the chat model that holds it; weak, so a chat model let go frees its batcher and model copy.
        self._batchers: weakref.WeakValueDictionary[int, ConcurrentBatcher] = weakref.WeakValueDictionary()

    # --- record

    def record(self, teacher_model: Any, splits: dict[str, list[Task]],
               traces: str | os.PathLike[str] | TraceStore | None = None) -> tuple[list[Trace], list[RewardReference]]:
        """Teacher traces on the train split (``traces.jsonl``, resumed task by task) and their references."""
        self.splits = splits
        self.traces, self.references = record_teacher(self.state, self.adapter, splits, teacher_model, self.config,
                                                      traces)
        return self.traces, self.references

    def load_recorded(self) -> None:
        """The splits, teacher traces and references that an earlier `record` wrote (``mentor train``/``eval``)."""
        if "traces" not in self.state.done:
            raise StageError(f"{self.dir} has no recorded traces; run `mentor record` first")
        self.splits = self.state.load_tasks()
        self.traces = self_consistency(split_traces(TraceStore(self.dir / "traces.jsonl"), self.splits["train"]))
        self.references = load_references(self.dir / "references.jsonl",
                                          verifiers=custom_verifiers(self.splits["train"]))

    # --- train

    def student_path(self) -> str:
        """The base student: ``"fitted"`` is this run's fitted student (`fitted_student`), built from its traces."""
        if self.student != FITTED:
            return self.student
        return str(fitted_student(self.dir / "student", self.traces, self.config))

    def base(self) -> tuple[Any, Any]:
        """The untrained student (model, tokenizer), loaded once per run."""
        if self._base is None:
            from mentor_agents.student import load_student

            self._base = load_student(self.student_path())
        return self._base

    def train(self, name: str, config: TrainConfig | None = None) -> TrainResult:
        """Train ``name`` into ``train/<method_dir(name)>/`` (resuming from its last checkpoint), or load it when it
        is finished (``train:<name>`` in the state). ``config`` defaults to the run's ``train`` settings with
        ``method=name``; an ``sft+*`` method runs only its GRPO stage, from the run's one merged SFT model
        (`sft_merged`)."""
        from mentor_agents.training import grpo, load_trained, method_dir, provenance, stages, train

        key = f"train:{name}"
        if name in self._trained:
            return self._trained[name]
        if key in self.state.done:
            info = self.state.info(key)
            model, tokenizer = load_trained(info["adapter_dir"], info["base_model"])
            return _training().TrainResult(
                method=info.get("method", name), output_dir=Path(info["adapter_dir"]).parent,
                adapter_dir=Path(info["adapter_dir"]), base_model=info["base_model"], model=model,
                tokenizer=tokenizer, metrics=read_metrics(info["metrics"]))
        config = replace(config or replace(self.config.train, method=name),
                         output_dir=str(self.dir / "train" / method_dir(name)), resume=self.resume)
        stage = Path(config.output_dir) / stages(config.method)[-1]
        merged = self.sft_merged(replace(config, method="sft")) if config.method.startswith("sft+") else None
        cpu = time.process_time()  # an sft+* method's SFT is counted once, under sft
        if merged is not None:
            import torch

            torch.manual_seed(config.seed)
            result = grpo(merged, None, self.references, self.adapter.rollout_fn(), config, stage,
                          trained_on=provenance(self.traces, self.references))
        else:
            model, tokenizer = copy.deepcopy(self.base())
            result = train(config, model, tokenizer, traces=self.traces, references=self.references,
                           rollout_fn=self.adapter.rollout_fn())
        self.state.mark(key, adapter_dir=str(result.adapter_dir), base_model=result.base_model, method=config.method,
                        reward=None if config.method == "sft" else config.reward_fn.name,
                        metrics=str(stage / "metrics.jsonl"), cpu_s=time.process_time() - cpu + result.resumed_cpu_s)
        self._trained[name] = result
        return result

    def sft_merged(self, config: TrainConfig) -> str:
        """The run's ``sft`` student (trained with ``config`` unless it is already) merged into its base
        (``train/sft/merged``): the start of every ``sft+*`` method."""
        from mentor_agents.training import merge

        out = self.dir / "train" / "sft" / "merged"
        if "merge:sft" not in self.state.done:
            merge(self.train("sft", config), out)
            self.state.mark("merge:sft", dir=str(out))
        return str(out)

    # --- evaluate

    def student_model(self, model: Any, tokenizer: Any) -> Any:
        """``model`` as the agent framework's chat model for the evaluation (a merged copy in ``config.eval_dtype``
        when set), generating at most the rollouts' ``max_new_tokens`` per turn. With ``config.eval_batch_size`` > 1
        the calls of concurrent runs are decoded together (`mentor_agents.prefix_cache.ConcurrentBatcher`)."""
        bound = {"max_new_tokens": self.config.train.max_new_tokens}
        if self.config.eval_dtype is not None:
            import torch
            from peft import PeftModel

            model = copy.deepcopy(model)
            if isinstance(model, PeftModel):
                model = model.merge_and_unload()
            model = model.to(getattr(torch, self.config.eval_dtype))
        model.eval()
        if self.config.eval_batch_size == 1:
            return self.adapter.student_model(model, tokenizer, **bound)
        from mentor_agents.prefix_cache import ConcurrentBatcher

        batcher = ConcurrentBatcher(model, tokenizer.pad_token_id, max_batch=self.config.eval_batch_size)
        chat_model = self.adapter.student_model(batcher, tokenizer, prefix_cache=None, **bound)
        self._batchers[id(chat_model)] = batcher
        return chat_model

    def evaluate(self, models: dict[str, Any]) -> dict[tuple[str, str], Metrics]:
        """Each model (a chat model of the agent's framework) on each held-out split (test, ood); a model named
        ``teacher`` goes first: its runs are the references for tool-set match and argument accuracy."""
        results: dict[tuple[str, str], Metrics] = {}
        for split in ("test", "ood"):
            if not self.splits.get(split):
                continue
            for name, model in sorted(models.items(), key=lambda kv: kv[0] != "teacher"):
                results[(name, split)] = self.evaluate_split(name, model, split, reference=name == "teacher")
        return results

    def evaluate_split(self, name: str, model: Any, split: str, adapter: AgentAdapter | None = None,
                       reference: bool = False, config: DistillConfig | None = None) -> Metrics:
        """``model`` in the agent (or ``adapter``'s) on ``split`` (``eval/<name>-<split>.jsonl``, resumed task by
        task), recorded as ``eval:<name>:<split>`` with its metrics and per-task outcomes. With ``reference``, its
        runs become the split's references."""
        cpu = time.process_time()
        traces = eval_traces(self.state, adapter or self.adapter, name, split, self.splits, model,
                             config or self.config)
        if (batcher := self._batchers.get(id(model))) is not None:
            # The split's runs have ended, so their cached turns would only hold memory (about 1 GB at a batch of
            # 32) while the other models are evaluated.
            batcher.clear()
        if reference:
            verifiers = custom_verifiers(self.splits[split])
            self.eval_references[split] = {r.task_id: r for r in build_references(traces, verifiers=verifiers)}
        metrics = evaluate_traces(traces, self.eval_references.get(split))
        self.state.mark(f"eval:{name}:{split}", **metrics.as_dict(), cpu_s=time.process_time() - cpu,
                        outcomes={t.task_id: float(t.verdict == "correct") for t in traces})
        return metrics

    # --- report

    def report(self, method: str, results: dict[tuple[str, str], Metrics],
               training: dict[str, list[dict[str, Any]]]) -> str:
        """``metrics.json``, ``report.md``, ``reward_curve.png``, ``success.png`` and ``run.json``."""
        return write_report(self.state, student_name(self.student), method, self.traces, self.references,
                            self.splits, results, training, self.config)


def student_name(student: str) -> str:
    return FITTED_LABEL if student == FITTED else _student().student_name(student)


# ------------------------------------------------------------------------------------------------------ stages


def prepare_tasks(run: RunState, adapter: AgentAdapter, tasks: Sequence[Task | str] | None,
                  traces: str | os.PathLike[str] | TraceStore | None, eval_tasks: Sequence[Task | str] | None,
                  ood_tasks: Sequence[Task | str] | None, teacher_model: Any, config: DistillConfig,
                  ) -> dict[str, list[Task]]:
    """The train / test / ood splits (``tasks.json``); the held-out split is taken before anything is trained."""
    if "tasks" not in run.done:
        given = [as_task(t) for t in tasks] if tasks else None
        if given is None and traces is not None:
            given = tasks_from_traces(as_store(traces).read(skip_invalid=True))
        if given is None:
            given = adapter.synthesize_tasks(config.synthetic_tasks, model=teacher_model, seed=config.seed)
        held_out = [as_task(t) for t in eval_tasks] if eval_tasks else None
        if held_out is None:
            shuffled = given[:]
            random.Random(config.seed).shuffle(shuffled)
            cut = max(1, int(len(shuffled) * config.eval_fraction)) if len(shuffled) > 1 else 0
            held_out, given = shuffled[:cut], shuffled[cut:]
        run.save_tasks({"train": given, "test": held_out, "ood": [as_task(t) for t in ood_tasks or []]})
    else:
        run.check_tasks(tasks, eval_tasks, ood_tasks)
    return run.load_tasks(custom=[*(tasks or []), *(eval_tasks or []), *(ood_tasks or [])])


def record_teacher(run: RunState, adapter: AgentAdapter, splits: dict[str, list[Task]], teacher_model: Any,
                   config: DistillConfig, traces: str | os.PathLike[str] | TraceStore | None = None,
                   ) -> tuple[list[Trace], list[RewardReference]]:
    """Teacher traces on the train split (``traces.jsonl``, resumed task by task) and their references."""
    store = TraceStore(run.dir / "traces.jsonl")
    if traces is not None and as_store(traces).path.resolve() != store.path.resolve() and "traces" not in run.done:
        recorded, train = store.recorded_keys(), {task.id for task in splits["train"]}
        for key, trace in as_store(traces).runs().items():
            if key not in recorded and trace.task_id in train:
                store.append(trace)
    checkable = all(t.verifier is not None and t.ground_truth is not None for t in splits["train"])
    samples = 1 if checkable else config.consistency_samples
    adapter.record(splits["train"], store, model=teacher_model, samples=samples,
                   concurrency=config.concurrency, timeout_s=config.timeout_s)
    teacher_traces = self_consistency(split_traces(store, splits["train"]))
    run.mark("traces")
    references = build_references(teacher_traces, verifiers=custom_verifiers(splits["train"]))
    save_references(references, run.dir / "references.jsonl")
    if not references:
        summary = summarize(teacher_traces)
        raise StageError(f"no teacher trace was verified correct ({summary.traces} traces, verdicts "
                         f"{summary.verdicts}); see {store.path}")
    return teacher_traces, references


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The per-step training logs of a ``metrics.jsonl`` (empty when the file does not exist)."""
    file = Path(path)
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()] if file.exists() else []


FITTED = "fitted"
"""The student name that `distill`, ``mentor train`` and ``mentor eval`` build for the run (`fitted_student`)."""
FITTED_LABEL = "fitted (random, tokenizer fitted to the teacher traces)"


def fitted_student(out: Path, traces: list[Trace], config: DistillConfig) -> Path:
    """The ``fitted`` student of this run: a random model whose tokenizer is fitted to the teacher's conversations
    (`mentor_agents.from_scratch.make_fitted_student`), built once into ``out``."""
    from mentor_agents.from_scratch import make_fitted_student
    from mentor_agents.student import build_atomically
    from mentor_agents.training import conversation

    if not (out / "config.json").is_file():
        conversations = [(conversation(t), t.tools) for t in traces if t.error is None]
        build_atomically(out, lambda tmp: make_fitted_student(tmp, conversations, seed=config.seed,
                                                              config=config.fitted))
    return out


def write_report(run: RunState, student: str, method: str, teacher_traces: list[Trace],
                 references: list[RewardReference], splits: dict[str, list[Task]],
                 results: dict[tuple[str, str], Metrics], training: dict[str, list[dict[str, Any]]],
                 config: DistillConfig) -> str:
    """``metrics.json``, ``report.md``, ``reward_curve.png``, ``success.png`` and ``run.json`` (for model cards)."""
    summary = summarize(teacher_traces)
    table = comparison_table(results)
    history = [row for row in training.get(method, []) if "reward" in row]
    if history:
        plot_reward_curve(history, run.dir / "reward_curve.png", title=f"{method}: reward per step")
    if results:
        plot_success(results, run.dir / "success.png")
    write_json_atomic(run.dir / "metrics.json", {
        "teacher": asdict(summary),
        "evaluation": {f"{m}|{s}": v.as_dict() for (m, s), v in results.items()},
        "training": training,
    })
    trained = run.info(f"train:{method}") if f"train:{method}" in run.done else None
    invalid = top_invalid_calls(Path(trained["metrics"]).with_name("rollouts.jsonl")) if trained else ""
    report = render_report(student, method, summary, len(references), splits, table,
                           learned_verdict(results, method), config, bool(history), invalid)
    write_text_atomic(run.dir / "report.md", report)
    write_json_atomic(run.dir / "run.json", {"student": student, "method": method, "table": table})
    return report


def eval_traces(run: RunState, adapter: AgentAdapter, model_name: str, split: str,
                splits: dict[str, list[Task]], model: Any, config: DistillConfig) -> list[Trace]:
    store = TraceStore(run.dir / "eval" / f"{model_name.replace(' ', '_').replace('+', '_')}-{split}.jsonl")
    return adapter.record(splits[split], store, model=model,
                          concurrency=max(config.concurrency, config.eval_batch_size), timeout_s=config.timeout_s,
                          **bounded_run(config.train.max_turns, teacher=model_name == "teacher"))


def split_traces(store: TraceStore, tasks: Sequence[Task]) -> list[Trace]:
    """The stored runs of ``tasks``, in task then sample order: the same list whichever order concurrent runs
    finished in, so the same traces give the same SFT batches and GRPO prompts."""
    order = {task.id: i for i, task in enumerate(tasks)}
    runs = {key: trace for key, trace in store.runs().items() if key[0] in order}
    return [runs[key] for key in sorted(runs, key=lambda key: (order[key[0]], key[1]))]


def bounded_run(max_turns: int, teacher: bool) -> dict[str, Any]:
    """How an evaluation run is bounded. A student's: at the rollouts' model-turn cap, ended by a repeated identical
    tool call, a timeout recorded and never retried. The teacher's runs are its reference behaviour, recorded as
    in training (failed attempts of an endpoint are retried)."""
    return {"retries": 3} if teacher else {"max_turns": max_turns, "stop_loops": True, "retries": 0}


def custom_verifiers(tasks: Sequence[Task]) -> dict[str, Any]:
    """The callable verifiers of ``tasks``, by task id."""
    return {task.id: task.verifier for task in tasks if is_custom(task.verifier)}


def learned_verdict(results: dict[tuple[str, str], Metrics], method: str) -> str:
    before, after = results.get(("untrained student", "test")), results.get((method, "test"))
    if before is None or after is None:
        return "No held-out test split: cannot say whether the student learned."
    if after.success > before.success:
        return (f"The student learned: held-out success {before.success:.0%} before training, "
                f"{after.success:.0%} after {method}.")
    return (f"The student did NOT beat the untrained student on the held-out split "
            f"({before.success:.0%} before, {after.success:.0%} after {method}).")


def top_invalid_calls(rollout_log: Path, top: int = 5) -> str:
    """The tool names of the most frequent invalid calls in a GRPO stage's ``rollouts.jsonl``, with counts;
    ``none`` when there were none, and empty when the stage has no rollout log (SFT)."""
    if not rollout_log.exists():
        return ""
    rollouts = [ScoredRollout.model_validate_json(line) for line in rollout_log.read_text().splitlines() if line]
    counts = Counter(call.label for r in rollouts for call in r.invalid_calls)
    return ", ".join(f"`{label}` {count}" for label, count in counts.most_common(top)) or "none"


def render_report(student: str, method: str, summary: Any, n_refs: int, splits: dict[str, list[Task]], table: str,
                  learned: str, config: DistillConfig, has_curve: bool, invalid: str = "") -> str:
    rate = "n/a" if summary.success_rate is None else f"{summary.success_rate:.0%}"
    invalid_row = f"| most frequent invalid tool calls in training | {invalid} |\n" if invalid else ""
    return f"""# Distillation report

{learned}

{table}

## What was used

| | |
|---|---|
| student | `{student}` |
| method | `{method}` (baselines: {", ".join(config.baselines) or "none"}) |
| reward | `{config.train.reward}` |
| tasks | train {len(splits["train"])}, held-out test {len(splits["test"])}, out-of-domain {len(splits["ood"])} |
| teacher traces | {summary.traces} (success rate {rate}, {summary.calls_per_task:.2f} calls per task) |
| references | {n_refs} verified-correct traces |
{invalid_row}
{"![reward curve](reward_curve.png)" if has_curve else ""}

![success by method and split](success.png)
"""


# ------------------------------------------------------------------------------------------------ run directory


class RunState:
    """Which stages of a run directory are finished (``state.json``), and its task splits (``tasks.json``)."""

    VERSION = 1

    def __init__(self, dir: Path, done: dict[str, Any] | None = None):
        self.dir, self.done = dir, done or {}

    @classmethod
    def open(cls, run_dir: str | os.PathLike[str], resume: bool = True) -> RunState:
        """The run directory's state; with ``resume=False`` every stage runs again (files are overwritten)."""
        run = Path(run_dir)
        if run.exists() and not run.is_dir():
            raise InvalidInputError(f"run directory {run} is a file; give a directory (it is created if missing)")
        run.mkdir(parents=True, exist_ok=True)
        state = cls(run)
        if resume:
            state.done = state._read()
        else:
            with state._lock():
                state._write()
        return state

    def mark(self, stage: str, **info: Any) -> None:
        """Record ``stage`` as finished; paths inside the run directory in ``info`` are stored relative to it, so
        the directory still works when moved or opened from another working directory. Processes that share a run
        directory (each running other stages) keep each other's marks."""
        with self._lock():
            self.done = {**self._read(), **self.done,
                         stage: {key: self.relative(value) for key, value in info.items()} or True}
            self._write()

    def _lock(self) -> FileLock:
        return FileLock(self.dir / "state.json.lock")

    def _read(self) -> dict[str, Any]:
        path = self.dir / "state.json"
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except (ValueError, RecursionError) as e:
            raise InvalidInputError(f"{path}: not valid JSON ({e}); delete it to run every stage again") from None
        if not isinstance(data, dict) or not isinstance(data.get("done", {}), dict):
            raise InvalidInputError(
                f"{path}: not a run state (expected {{\"version\": {self.VERSION}, \"done\": {{...}}}})")
        if data.get("version") != self.VERSION:
            raise StageError(f"{path} was written by an incompatible mentor_agents (state version "
                             f"{data.get('version')!r}, this one reads {self.VERSION}); use a new run_dir")
        return data.get("done", {})

    def _write(self) -> None:
        write_json_atomic(self.dir / "state.json", {"version": self.VERSION, "done": self.done})

    def relative(self, value: Any) -> Any:
        if not isinstance(value, (str, os.PathLike)):
            return value
        path, run = Path(value).resolve(), self.dir.resolve()
        return str(path.relative_to(run)) if path.is_relative_to(run) else str(value)

    def info(self, stage: str) -> dict[str, Any]:
        """What `mark` stored for ``stage``, with its paths inside the run directory made whole again."""
        return {key: str(self.dir / value) if isinstance(value, str) and (self.dir / value).exists() else value
                for key, value in self.done[stage].items()}

    def save_tasks(self, splits: dict[str, list[Task]]) -> None:
        write_json_atomic(self.dir / "tasks.json", {
            split: [task_to_dict(t) for t in tasks] for split, tasks in splits.items()
        })
        self.mark("tasks")

    def check_tasks(self, tasks: Sequence[Task | str] | None, eval_tasks: Sequence[Task | str] | None,
                    ood_tasks: Sequence[Task | str] | None) -> None:
        """Stop when the tasks passed differ from those stored in ``tasks.json``: resuming would silently run
        another experiment. Without ``eval_tasks`` the test split was drawn from ``tasks``, so ``tasks`` must equal
        train and test together."""
        stored = json.loads((self.dir / "tasks.json").read_text())
        checks = {"train": (tasks, stored["train"] + ([] if eval_tasks else stored["test"])),
                  "test": (eval_tasks, stored["test"]), "ood": (ood_tasks, stored["ood"])}
        for split, (passed, kept) in checks.items():
            if passed is None:
                continue
            given = [task_to_dict(as_task(t)) for t in passed]
            if canonical(given) != canonical(kept):
                raise InvalidInputError(
                    f"the {split} tasks passed ({len(given)}) differ from those stored in {self.dir / 'tasks.json'} "
                    f"({len(kept)}); to run them, use a new run_dir, or pass resume=False to start this one over")

    def load_tasks(self, custom: Sequence[Task | str] = ()) -> dict[str, list[Task]]:
        """The stored splits; tasks whose verifier is a callable get it back from ``custom`` by id."""
        callables = custom_verifiers([t for t in custom if isinstance(t, Task)])
        data = json.loads((self.dir / "tasks.json").read_text())
        return {split: [task_from_dict(record, callables) for record in records] for split, records in data.items()}


def canonical(tasks: list[dict[str, Any]]) -> list[str]:
    """Stored tasks in a form that compares equal when they are the same tasks, in any order."""
    return sorted(json.dumps(task, sort_keys=True, default=str) for task in tasks)


def as_task(task: Task | str) -> Task:
    if isinstance(task, Task):
        return task
    import hashlib

    return Task(id="task-" + hashlib.sha256(task.encode()).hexdigest()[:12], input=task)


def as_store(traces: str | os.PathLike[str] | TraceStore) -> TraceStore:
    return traces if isinstance(traces, TraceStore) else TraceStore(traces)


def tasks_from_traces(traces: Sequence[Trace]) -> list[Task]:
    """One task per distinct task id of ``traces``, with the ground truth and built-in verifier they carry."""
    tasks: dict[str, Task] = {}
    for trace in traces:
        if trace.verifier == "custom":
            raise InvalidInputError(f"task {trace.task_id!r} of the traces was judged by a custom (callable) "
                                    "verifier, which traces cannot store; pass the tasks, with their verifiers, "
                                    "as well")
        if trace.task_id not in tasks:
            tasks[trace.task_id] = Task(id=trace.task_id, input=trace.task_input, ground_truth=trace.ground_truth,
                                        verifier=trace.verifier)
    return list(tasks.values())


def _training():
    import mentor_agents.training

    return mentor_agents.training


def _fitted_config() -> FittedStudentConfig:
    from mentor_agents.from_scratch import FittedStudentConfig

    return FittedStudentConfig()


def _student():
    import mentor_agents.student

    return mentor_agents.student


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))
