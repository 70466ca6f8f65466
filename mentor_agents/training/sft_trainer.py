"""SFT: LoRA fine-tuning on the teacher's conversations, with the loss on the assistant tokens only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from mentor_agents.chat_templates import training_chat_template
from mentor_agents.traces import ModelStep, Trace
from mentor_agents.training.checkpoints import MetricsFile, TrainResult, finish, fit, load_model, provenance
from mentor_agents.training.config import TrainConfig
from mentor_agents.training.prefix_sharing import SharedPrefixSFTTrainer


def conversation(trace: Trace) -> list[dict[str, Any]]:
    """The trace's whole conversation: the last model call's input (system, user, calls, tool results) plus its
    output (the final answer)."""
    steps = [step for step in trace.steps if isinstance(step, ModelStep)]
    if not steps:
        raise ValueError(f"trace {trace.id} (task {trace.task_id}) has no model step")
    return [*steps[-1].input_messages, steps[-1].output]


def sft_dataset(traces: Sequence[Trace], tokenizer: PreTrainedTokenizerBase, max_length: int | None = None,
                ) -> Dataset:
    """Tokenized teacher conversations with their tool schemas, and a mask of the assistant tokens. Traces with an
    error or an ``incorrect`` verdict are left out.

    Tokenized here, not by SFTTrainer, because Arrow would merge the tool-call argument dicts of different tools
    into one struct and the template would then render ``null`` arguments. The mask comes from TRL's training
    variant of the chat template (``{% generation %}`` markers), so the loss covers exactly the assistant turns.
    """
    template = training_chat_template(tokenizer)
    rows = []
    for trace in traces:
        # Imitating a run the verifier (or teacher self-consistency) rejected teaches the student the wrong answer.
        if trace.error is not None or trace.verdict == "incorrect":
            continue
        rendered = tokenizer.apply_chat_template(
            conversation(trace), tools=trace.tools or None, chat_template=template, tokenize=True,
            return_dict=True, return_assistant_tokens_mask=True,
        )
        ids, mask = list(rendered["input_ids"]), list(rendered["assistant_masks"])
        if 1 not in mask:
            raise ValueError(f"trace {trace.id}: the chat template marks no assistant tokens; it needs "
                             "{% generation %} markers (TRL supplies them for the templates it knows)")
        if max_length is not None:
            ids, mask = ids[:max_length], mask[:max_length]
        rows.append({"input_ids": ids, "assistant_masks": mask})
    if not rows:
        raise ValueError("no usable traces for SFT (every trace had an error or an incorrect verdict, or none "
                         "were given)")
    return Dataset.from_list(rows)


def sft(model: str | os.PathLike[str] | PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None,
        traces: Sequence[Trace], config: TrainConfig, output_dir: str | os.PathLike[str] | None = None,
        callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Supervised fine-tuning (LoRA) on the teacher traces, with loss on the assistant tokens only."""
    if traces and not isinstance(traces[0], Trace):
        raise TypeError(f"sft needs Trace records (full conversations), got {type(traces[0]).__name__}")
    model, tokenizer = load_model(model, tokenizer)
    out = Path(output_dir or Path(config.output_dir) / "sft")
    trainer = SharedPrefixSFTTrainer(
        model=model, args=config.sft_args(out), train_dataset=sft_dataset(traces, tokenizer),
        processing_class=tokenizer, peft_config=config.lora(),
        callbacks=[MetricsFile(out / "metrics.jsonl"), *callbacks], micro_batch_tokens=config.micro_batch_tokens,
    )
    resumed_cpu_s = fit(trainer, out, config.resume)
    return finish(trainer, config, out, "sft", model.config.name_or_path, provenance(traces), resumed_cpu_s)

