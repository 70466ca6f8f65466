"""GRPO: LoRA training against a teacher-guided reward, on rollouts of the real agent (TRL's `GRPOTrainer`).

Rollouts come from a ``rollout_fn`` supplied by an integration (for LangGraph:
`mentor_agents.integrations.langgraph.rollouts.graph_rollout_fn`), which runs the real agent with the student
swapped in and returns token-exact `Rollout` records; it gets only the `RolloutSettings` of the config. This module
never imports an agent framework.

Each GRPO step logs (to ``trainer.state.log_history`` and ``<output_dir>/<stage>/metrics.jsonl``): ``reward``,
``reward_std``, ``reward/<component>`` (the reward breakdown, 0 where a gate fired), ``reward/gated``,
``rollout/tool_call_rate`` (share of rollouts with a valid call), ``rollout/tool_calls``,
``rollout/with_invalid_call`` (share of rollouts with an invalid call), ``rollout/invalid_calls/<name>`` (invalid
calls naming that tool in the step's rollouts; ``<malformed>`` for calls that did not parse), ``rollout/turns``,
``rollout/finished``, ``rollout/rerendered_rollouts`` (rollouts whose chat template re-rendered a sampled turn
differently, stitched on `mentor_agents.tokens.stitch`'s non-strict path; expected 0), ``kl`` (when ``beta > 0``) and
``frac_reward_zero_std`` (share of groups whose rewards are all equal). Each rollout, with its reward, breakdown and reason, goes to ``<output_dir>/<stage>/rollouts.jsonl``
(`mentor_agents.rollouts.ScoredRollout`).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from accelerate.utils import gather_object
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation

from mentor_agents.files import append_lines
from mentor_agents.references import RewardReference
from mentor_agents.rewards import Reward, RewardResult
from mentor_agents.rollouts import Rollout, RolloutFn, ScoredRollout
from mentor_agents.training.checkpoints import MetricsFile, Provenance, TrainResult, finish, fit, load_model, provenance
from mentor_agents.training.config import TrainConfig, grpo_stage
from mentor_agents.training.prefix_sharing import SharedPrefixGRPOTrainer
from mentor_agents.vllm_rollouts import VLLMClientBackend

def grpo_dataset(references: Sequence[RewardReference]) -> Dataset:
    """One row per reference: the task text as the prompt, and the reference (JSON) for the reward."""
    if not references:
        raise ValueError("no references to train on")
    return Dataset.from_list([{"prompt": ref.task_input, "reference": ref.model_dump_json()} for ref in references])


def rollout_metrics(rollouts: Sequence[Rollout]) -> dict[str, float]:
    """Tool-call, invalid-call, turn and finish rates over ``rollouts``, the count of invalid calls by name, and how
    many rollouts were stitched past a re-rendered turn."""
    n = max(1, len(rollouts))
    invalid = Counter(call.label for r in rollouts for call in r.invalid_calls)
    return {
        "rollout/tool_call_rate": sum(bool(r.tool_calls) for r in rollouts) / n,
        "rollout/tool_calls": sum(len(r.tool_calls) for r in rollouts) / n,
        "rollout/with_invalid_call": sum(bool(r.invalid_calls) for r in rollouts) / n,
        "rollout/turns": sum(r.turns for r in rollouts) / n,
        "rollout/finished": sum(r.finished for r in rollouts) / n,
        "rollout/prefill_fallbacks": sum(r.prefill_fallbacks for r in rollouts) / n,
        "rollout/rerendered_rollouts": sum(r.rerendered_turns > 0 for r in rollouts),
        **{f"rollout/invalid_calls/{label}": count for label, count in invalid.most_common()},
    }


def score_rollouts(rollouts: Sequence[Rollout], references: Sequence[RewardReference],
                   reward: Reward) -> tuple[list[RewardResult], dict[str, float]]:
    """Rewards of ``rollouts`` against their references, and the mean of each breakdown component."""
    results = [reward(r, ref) for r, ref in zip(rollouts, references, strict=True)]
    names = sorted({k for res in results for k in res.breakdown if k != "gate"})
    n = max(1, len(results))
    means = {f"reward/{k}": sum(res.breakdown.get(k, 0.0) for res in results) / n for k in names}
    means["reward/gated"] = sum("gate" in res.breakdown for res in results) / n
    return results, means


def log_rollouts(path: Path, step: int, rollouts: Sequence[Rollout], results: Sequence[RewardResult],
                 main: bool = True) -> None:
    """Append one `ScoredRollout` line per rollout to ``path``; every process's rollouts, written by the main one."""
    lines = gather_object([ScoredRollout(
        step=step, task_id=r.task_id, reward=res.value, breakdown=res.breakdown, reason=res.reason,
        finished=r.finished, cut_by=r.cut_by, turns=r.turns, tool_calls=r.tool_calls, invalid_calls=r.invalid_calls,
        final_answer=r.final_answer,
    ).model_dump_json() + "\n" for r, res in zip(rollouts, results, strict=True)])
    if main:
        append_lines(path, lines)


def make_rollout_func(rollout_fn: RolloutFn, references: Sequence[RewardReference], config: TrainConfig):
    """The TRL ``rollout_func``: runs ``rollout_fn`` on the references behind the (already repeated) prompts and
    returns one token-exact rollout per prompt, with ``env_mask`` masking template and tool tokens."""
    by_prompt = {ref.task_input: ref for ref in references}

    def rollout_func(prompts: list[str], trainer: GRPOTrainer) -> dict[str, list]:
        batch = [by_prompt[p] for p in prompts]
        vllm = {"backend": vllm_backend(trainer)} if trainer.use_vllm else {}
        start = time.perf_counter()
        # Each process rolls out its own share of the prompts; under DeepSpeed ZeRO-3 the sharded weights are
        # gathered for generation, as in TRL's own generation path.
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gather_deepspeed3_params=trainer.args.ds3_gather_for_generation) as model:
            rollouts = rollout_fn(batch, model, trainer.processing_class, config.rollout, **vllm)
        seconds = time.perf_counter() - start
        if len(rollouts) != len(prompts):
            raise RuntimeError(f"rollout_fn returned {len(rollouts)} rollouts for {len(prompts)} prompts")
        rollouts = [_within_budget(r, config.max_completion_length) for r in rollouts]
        return {
            "prompt_ids": [r.prompt_ids for r in rollouts],
            "completion_ids": [r.completion_ids for r in rollouts],
            "logprobs": [r.logprobs for r in rollouts],
            "env_mask": [r.completion_mask for r in rollouts],
            "rollout": rollouts,
            "rollout_seconds": seconds,
        }

    return rollout_func


def vllm_backend(trainer: GRPOTrainer) -> VLLMClientBackend:
    """The rollout backend on the vLLM server of a trainer running with ``use_vllm=True``, ``vllm_mode="server"``
    (TRL has synced the policy's weights to it before calling the ``rollout_func``)."""
    if trainer.vllm_mode != "server" or trainer.accelerator.num_processes > 1:
        raise ValueError(f"vLLM rollouts need vllm_mode='server' and one training process, got "
                         f"{trainer.vllm_mode!r} on {trainer.accelerator.num_processes} processes")
    return VLLMClientBackend(trainer.vllm_generation.vllm_client)


def _within_budget(rollout: Rollout, budget: int) -> Rollout:
    if not rollout.completion_ids:
        raise RuntimeError(f"rollout of task {rollout.task_id!r} has no completion tokens; the rollout_fn must "
                           "record the sampled tokens (record_tokens=True)")
    if len(rollout.completion_ids) <= budget:
        return rollout
    return rollout.model_copy(update={
        "finished": False, "cut_by": "token_budget", "completion_ids": rollout.completion_ids[:budget],
        "completion_mask": rollout.completion_mask[:budget], "logprobs": rollout.logprobs[:budget],
    })


def make_reward_func(reward: Reward, references: Sequence[RewardReference],
                     rollout_log: Path | None = None):
    """The TRL reward function: scores each rollout against the reference of its dataset row (the in-memory one,
    which keeps a callable verifier), logs the reward breakdown and rollout rates as step metrics, and appends each
    scored rollout to ``rollout_log`` (JSONL)."""
    by_task = {ref.task_id: ref for ref in references}

    def teacher_guided_reward(prompts, completions, rollout, reference, log_metric=None, rollout_seconds=None,
                              trainer_state=None, **_) -> list[float]:
        refs = [by_task[json.loads(r)["task_id"]] for r in reference]
        results, components = score_rollouts(rollout, refs, reward)
        if rollout_log is not None and trainer_state is not None:
            # The reward is computed inside the step that the trainer counts once it is done.
            log_rollouts(rollout_log, trainer_state.global_step + 1, rollout, results,
                         main=trainer_state.is_world_process_zero)
        if log_metric is not None:
            for name, value in {**components, **rollout_metrics(rollout)}.items():
                log_metric(name, value)
            if rollout_seconds:
                seconds = rollout_seconds[0]
                log_metric("rollout/seconds", seconds)
                log_metric("rollout/sampled_tokens_per_s", sum(sum(r.completion_mask) for r in rollout) / seconds)
        return [res.value for res in results]

    teacher_guided_reward.__name__ = reward.name
    return teacher_guided_reward


def grpo(model: str | os.PathLike[str] | PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None,
         references: Sequence[RewardReference], rollout_fn: RolloutFn, config: TrainConfig,
         output_dir: str | os.PathLike[str] | None = None, callbacks: Sequence[TrainerCallback] = (),
         trained_on: Provenance | None = None) -> TrainResult:
    """GRPO (TRL) with LoRA, rollouts from ``rollout_fn`` and the teacher-guided reward of ``config``.
    ``trained_on`` (the teacher, traces and tools, for the model card) defaults to what the references say."""
    model, tokenizer = load_model(model, tokenizer)
    out = Path(output_dir or Path(config.output_dir) / grpo_stage(config.method))
    trainer = SharedPrefixGRPOTrainer(
        model=model, reward_funcs=make_reward_func(config.reward_fn, references, out / "rollouts.jsonl"),
        args=config.grpo_args(out), train_dataset=grpo_dataset(references), processing_class=tokenizer,
        peft_config=config.lora(), rollout_func=make_rollout_func(rollout_fn, references, config),
        callbacks=[MetricsFile(out / "metrics.jsonl"), *callbacks], micro_batch_tokens=config.micro_batch_tokens,
    )
    resumed_cpu_s = fit(trainer, out, config.resume)
    return finish(trainer, config, out, grpo_stage(config.method), model.config.name_or_path,
                  trained_on or provenance(references=references), resumed_cpu_s)


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, references: Sequence[RewardReference],
             rollout_fn: RolloutFn, config: TrainConfig) -> dict[str, float]:
    """One rollout per held-out reference: mean reward, its components, and the rollout rates."""
    was_training = model.training
    model.eval()
    try:
        rollouts = rollout_fn(list(references), model, tokenizer, config.rollout)
    finally:
        model.train(was_training)
    results, components = score_rollouts(rollouts, references, config.reward_fn)
    return {"reward": statistics.fmean(r.value for r in results), **components, **rollout_metrics(rollouts)}
