"""A training stage: the model it starts from, its checkpoints and resuming from them, the metrics log, and the
finished stage (the adapter, with the full config and the reward beside it in ``train_config.json``, which the
model card reads).

```
<stage>/               sft, mentor or sparse (see `mentor_agents.training.config.stages`)
  checkpoint-N/        every ``save_steps`` steps (adapter, optimizer, scheduler, RNG, data position)
  metrics.jsonl        one line per logged step
  rollouts.jsonl       GRPO only: every scored rollout
  adapter/             the trained LoRA adapter and tokenizer
  train_config.json    method, base model, steps, reward, teacher, traces, tools, CPU seconds and the full TrainConfig
```

A stage's process CPU seconds (`StageClock`) are written into every checkpoint, so a stage killed and resumed adds
what its earlier attempts spent up to the checkpoint it resumes from (`TrainResult.resumed_cpu_s`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, TrainerState

from mentor_agents.references import RewardReference
from mentor_agents.student import load_student
from mentor_agents.traces import Trace
from mentor_agents.files import append_lines, save_dir_atomically, write_text_atomic
from mentor_agents.training.config import TrainConfig, reward_description


@dataclass
class TrainResult:
    method: str
    output_dir: Path
    adapter_dir: Path
    """The trained LoRA adapter; `load_trained` loads it on ``base_model``."""
    base_model: str
    """Directory or id of the model the adapter applies to (for ``sft+mentor``: the merged SFT model)."""
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """Per-step logs of the last stage (``trainer.state.log_history``)."""
    resumed_cpu_s: float = 0.0
    """Process CPU seconds the last stage's earlier, killed attempts spent up to the checkpoint it resumed from (0
    when it ran in one go); add it to this attempt's CPU for the stage's whole cost."""


@dataclass
class Provenance:
    """What a stage trained on, written beside its adapter for the model card."""

    teacher: str | None = None
    traces: str | None = None
    """Where the teacher traces came from and how many were used."""
    tools: list[str] = field(default_factory=list)


def provenance(traces: Sequence[Trace] = (), references: Sequence[RewardReference] = ()) -> Provenance:
    """The teacher, the traces and the tools a stage trained on (from the references when no traces are given)."""
    teachers = sorted({t.teacher_model for t in traces if t.teacher_model})
    counts = [f"{len(traces)} teacher traces"] * bool(traces) + [f"{len(references)} verified references"] * bool(
        references)
    tools = {s["function"]["name"] for t in traces for s in t.tools if "function" in s}
    return Provenance(teacher=", ".join(teachers) or None, traces=", ".join(counts) or None,
                      tools=sorted(tools.union(*(r.tool_names for r in references))))


def load_model(model: str | os.PathLike[str] | PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None,
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and tokenizer by any name `load_student` takes, or ``model`` itself with its ``tokenizer``."""
    if isinstance(model, PreTrainedModel):
        if tokenizer is None:
            raise ValueError("pass the tokenizer along with a model object")
        return model, tokenizer
    loaded, prepared = load_student(model)
    return loaded, tokenizer if tokenizer is not None else prepared


class MetricsFile(TrainerCallback):
    """Appends every log entry (with its step) to a JSONL file, flushed and fsynced per line."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        append_lines(self.path, [json.dumps({"step": state.global_step, **logs}) + "\n"])


class StageClock(TrainerCallback):
    """Process CPU seconds of a stage: ``earlier`` (its killed attempts, up to the checkpoint this one resumed from)
    plus this attempt's. Stored after every step in ``trainer_state.json`` (as transformers stores a stateful callback), which
    a checkpoint writes last, so a complete checkpoint always holds the CPU spent up to it."""

    def __init__(self, earlier: float = 0.0):
        self.earlier, self.start = earlier, time.process_time()

    @property
    def cpu_s(self) -> float:
        return self.earlier + time.process_time() - self.start

    def on_step_end(self, args, state, control, **kwargs):
        state.stateful_callbacks[type(self).__name__] = {"args": {"earlier": self.cpu_s}, "attributes": {}}

    @classmethod
    def stored(cls, checkpoint: Path) -> float:
        """The CPU seconds stored in ``checkpoint`` (0 for one written before stages kept their CPU)."""
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        return (state.get("stateful_callbacks") or {}).get(cls.__name__, {}).get("args", {}).get("earlier", 0.0)


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def last_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest checkpoint in ``output_dir`` that was written completely.

    Transformers writes a checkpoint in place and its ``trainer_state.json`` last, so a process killed mid-save
    leaves a directory without a readable state file; such directories are skipped.
    """
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = _CHECKPOINT.match(path.name)
        if match and _complete(path):
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def _complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def fit(trainer, out: Path, resume: bool) -> float:
    """Train, or resume from the last complete checkpoint in ``out`` when ``resume``; returns the CPU seconds that
    the stage's earlier attempts spent up to that checkpoint (`StageClock`)."""
    checkpoint = last_checkpoint(out) if resume else None
    resumed_cpu_s = StageClock.stored(checkpoint) if checkpoint is not None else 0.0
    trainer.add_callback(StageClock(resumed_cpu_s))
    metrics, rollouts = out / "metrics.jsonl", out / "rollouts.jsonl"
    main = trainer.is_world_process_zero()  # one process tidies the run directory; the others wait below
    if checkpoint is None:
        if main and out.exists():
            # Training starts at step 0: it must not inherit stale checkpoints (only incomplete ones, when resuming)
            # or metrics of an earlier or killed run in the same directory.
            for stale in [*out.glob("checkpoint-*"), metrics, rollouts]:
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    elif main:
        for partial in out.glob("checkpoint-*"):
            if partial.is_dir() and not _complete(partial):
                shutil.rmtree(partial)
        # Steps logged after the checkpoint are redone on resume, and the end-of-training summary is logged again
        # when the resumed run ends; drop their lines so each appears once.
        step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
        for log in (metrics, rollouts):
            if log.exists():
                kept = [line for line in log.read_text().splitlines()
                        if _kept_on_resume(line, step, keep_summary=_finished(checkpoint))]
                write_text_atomic(log, "".join(line + "\n" for line in kept))
    trainer.accelerator.wait_for_everyone()
    if checkpoint is not None and _finished(checkpoint):
        # Resumed at its last step, the trainer would run one step past max_steps (its stop check comes after a
        # step); load the final weights and state instead.
        trainer._load_from_checkpoint(str(checkpoint))
        trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
        return resumed_cpu_s
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return resumed_cpu_s


def _finished(checkpoint: Path) -> bool:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return 0 < state["max_steps"] <= state["global_step"]


def _kept_on_resume(line: str, step: int, keep_summary: bool) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:  # the partial last line of a killed run
        return False
    return entry["step"] <= step and (keep_summary or "train_runtime" not in entry)


def finish(trainer, config: TrainConfig, out: Path, stage: str, base: str, provenance: Provenance,
           resumed_cpu_s: float = 0.0) -> TrainResult:
    """Save the stage's adapter and, beside it, ``train_config.json``; the trained `TrainResult` (its method is
    ``sft`` for the SFT stage of an ``sft+*`` method). ``resumed_cpu_s``: what `fit` returned."""
    adapter, method = out / "adapter", "sft" if stage == "sft" else config.method

    def save(tmp: Path) -> None:
        trainer.model.save_pretrained(tmp)
        trainer.processing_class.save_pretrained(tmp)

    if trainer.is_world_process_zero():
        save_dir_atomically(adapter, save)
        write_text_atomic(out / "train_config.json", json.dumps({
            "method": method, "stage": stage, "base_model": base, "global_step": trainer.state.global_step,
            "reward": reward_description(config, stage), **asdict(provenance), "train_config": asdict(config),
        }, indent=2, default=str))
    trainer.accelerator.wait_for_everyone()
    return TrainResult(
        method=method, output_dir=out, adapter_dir=adapter, base_model=base, model=trainer.model,
        tokenizer=trainer.processing_class, metrics=list(trainer.state.log_history), resumed_cpu_s=resumed_cpu_s,
    )


def stage_info(adapter_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``train_config.json`` beside a trained adapter (empty for an adapter trained before it was written)."""
    path = Path(adapter_dir).parent / "train_config.json"
    return json.loads(path.read_text()) if path.exists() else {}
