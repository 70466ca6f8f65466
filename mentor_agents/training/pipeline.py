"""`train(config, model, ...)`: one method end to end (SFT, GRPO, or SFT then GRPO from the merged SFT model), and
`load_trained` to load what it trained."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from accelerate import PartialState
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mentor_agents.files import recover_dir, save_dir_atomically
from mentor_agents.references import RewardReference, build_references
from mentor_agents.rollouts import RolloutFn
from mentor_agents.student import load_student
from mentor_agents.traces import Trace
from mentor_agents.training.checkpoints import TrainResult, provenance
from mentor_agents.training.config import SFT_FIRST, TrainConfig, stages
from mentor_agents.training.grpo_trainer import grpo
from mentor_agents.training.sft_trainer import sft


def train(config: TrainConfig, model: str | os.PathLike[str] | PreTrainedModel,
          tokenizer: PreTrainedTokenizerBase | None = None, *, traces: Sequence[Trace] | None = None,
          references: Sequence[RewardReference] | None = None, rollout_fn: RolloutFn | None = None,
          sft_result: TrainResult | None = None) -> TrainResult:
    """Run ``config.method`` into ``config.output_dir/<stage>/`` (`stages`): ``sft`` on ``traces``; ``sparse`` /
    ``mentor`` GRPO on ``references`` (built from the correct ``traces`` when not given); ``sft+mentor``
    (``sft+sparse``) = SFT, merge the adapter into the base (``sft/merged/``), then MENTOR (sparse) GRPO with a
    fresh adapter. ``sft_result``, a finished SFT run of the same model, is their warm start instead of training SFT
    again.
    """
    torch.manual_seed(config.seed)
    out = Path(config.output_dir)
    if config.method in SFT_FIRST and not traces:
        raise ValueError(f"method {config.method!r} needs teacher traces")
    if config.method != "sft":
        if rollout_fn is None:
            raise ValueError(f"method {config.method!r} needs a rollout_fn (e.g. integrations.langgraph.rollouts."
                             "graph_rollout_fn(agent))")
        if references is None:
            references = build_references(traces or [])
        if not references:
            raise ValueError("no reward references: give references, or traces with correct verdicts")

    if config.method in SFT_FIRST:
        result = sft_result or sft(model, tokenizer, traces, config, out / "sft")
        if config.method == "sft":
            return result
        merged = out / "sft" / "merged"
        state = PartialState()
        if state.is_main_process:
            merge(result, merged)
        state.wait_for_everyone()
        model, tokenizer = str(merged), result.tokenizer
    return grpo(model, tokenizer, references, rollout_fn, config, out / stages(config.method)[-1],
                trained_on=provenance(traces or (), references))


def merge(result: TrainResult, out_dir: str | os.PathLike[str]) -> str:
    """Merge ``result``'s adapter into its base and save model and tokenizer to ``out_dir``; returns the dir."""
    merged = result.model.merge_and_unload() if isinstance(result.model, PeftModel) else result.model

    def save(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        result.tokenizer.save_pretrained(tmp)

    save_dir_atomically(Path(out_dir), save)
    return str(out_dir)


def load_trained(result_or_adapter: TrainResult | str | os.PathLike[str], base_model: str | None = None,
                 ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The trained student (base model with its adapter) and tokenizer, from a `TrainResult` or an adapter dir,
    loaded by `load_student` (device, dtype and tokenizer prepared as for a fresh student)."""
    if isinstance(result_or_adapter, TrainResult):
        adapter, base_model = result_or_adapter.adapter_dir, result_or_adapter.base_model
    else:
        adapter = Path(result_or_adapter)
        recover_dir(adapter)
        if base_model is None:
            base_model = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    return load_student(base_model, adapter=adapter)
