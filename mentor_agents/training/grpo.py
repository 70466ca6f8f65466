"""Training the student: SFT on teacher traces, and GRPO against a teacher-guided reward, both with LoRA through TRL.

GRPO rollouts come from a ``rollout_fn`` supplied by an integration (for LangGraph:
`mentor_agents.integrations.langgraph.rollouts.graph_rollout_fn`), which runs the real agent with the student
swapped in and returns token-exact `Rollout` records. This module never imports an agent framework.

```python
config = TrainConfig(method="sft+mentor", steps=60, output_dir="runs/calc")
result = train(config, "out/tiny-student", traces=traces, rollout_fn=graph_rollout_fn(agent))
result.adapter_dir, result.metrics[-1]["reward"]
```

Each GRPO step logs (to ``trainer.state.log_history`` and ``<output_dir>/<stage>/metrics.jsonl``): ``reward``,
``reward_std``, ``reward/<component>`` (the reward breakdown, 0 where a gate fired), ``reward/gated``,
``rollout/tool_call_rate`` (share of rollouts with a valid call), ``rollout/tool_calls``,
``rollout/invalid_call_rate`` (share of rollouts with an invalid call), ``rollout/invalid_calls/<name>`` (invalid
calls naming that tool in the step's rollouts; ``<malformed>`` for calls that did not parse), ``rollout/turns``,
``rollout/finished``, ``kl`` (when ``beta > 0``) and ``frac_reward_zero_std`` (share of groups whose rewards are all
equal). Each rollout, with its reward, breakdown and reason, goes to ``<output_dir>/<stage>/rollouts.jsonl``
(`mentor_agents.rollouts.ScoredRollout`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerState,
)
from trl import GRPOConfig, GRPOTrainer, SFTConfig
from trl.models import unwrap_model_for_generation

from mentor_agents.files import append_lines, recover_dir, save_dir_atomically, write_text_atomic
from mentor_agents.prefix_sharing import SharedPrefixGRPOTrainer, SharedPrefixSFTTrainer
from mentor_agents.references import RewardReference, build_references
from mentor_agents.rewards import REWARD_NAMES, RewardResult, TeacherGuidedReward
from mentor_agents.rollouts import Rollout, ScoredRollout
from mentor_agents.student import load_student, training_chat_template
from mentor_agents.traces import ModelStep, Trace
from mentor_agents.vllm_rollouts import VLLMClientBackend

Method = Literal["sft", "sparse", "mentor", "sft+sparse", "sft+mentor"]
METHODS: tuple[str, ...] = ("sft", "sparse", "mentor", "sft+sparse", "sft+mentor")
SFT_FIRST: tuple[str, ...] = ("sft", "sft+sparse", "sft+mentor")
"""The methods that train SFT first (``sft+*`` then run GRPO from the merged SFT model)."""


def grpo_stage(method: str) -> str:
    """The GRPO stage directory of ``method``: ``sparse`` for the sparse-reward methods, else ``mentor``."""
    return "sparse" if method in ("sparse", "sft+sparse") else "mentor"


@dataclass
class TrainConfig:
    """Every training setting. The defaults train the tiny test student on CPU in seconds.

    ``reward`` picks the GRPO reward for ``mentor`` and ``sft+mentor`` (any of ``REWARD_NAMES``: the ablations run
    by name, also after SFT); ``sparse`` and ``sft+sparse`` always use the sparse reward. ``beta`` is the weight of
    the KL-to-base loss term, where the base is the model with the adapter disabled (for ``sft+*``: the merged SFT
    model).
    """

    method: Method = "mentor"
    reward: str = "mentor"
    argument_weight: float = 0.0
    order_weight: float = 0.0
    efficiency_weight: float = 0.0
    max_calls_factor: float | None = None
    # SFT
    sft_lr: float = 2e-3
    sft_epochs: float = 1.0
    sft_steps: int = -1
    """SFT optimiser steps; -1 runs ``sft_epochs`` epochs."""
    sft_batch_size: int = 8
    """Sequences per optimiser step over all processes (split among them under `accelerate launch`)."""
    sft_lr_scheduler: str = "constant"
    """Any transformers scheduler name; ``"cosine"`` decays to 0 over ``sft_steps`` and ends at a lower loss."""
    # GRPO
    lr: float = 3e-4
    steps: int = 10
    prompts_per_step: int = 4
    """Prompts per optimiser step over all processes; each gets ``num_generations`` rollouts. Under `accelerate
    launch` the batch is split among the processes, so a run has the same global batch on any process count."""
    num_generations: int = 8
    max_turns: int = 5
    max_new_tokens: int = 64
    """Token budget of one model turn."""
    max_completion_length: int = 512
    """Token budget of a whole rollout (sampled, template and tool tokens); a longer rollout is cut and scores 0."""
    temperature: float = 1.0
    beta: float = 0.001
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    # LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str | list[str] = "all-linear"
    lora_modules_to_save: list[str] | None = None
    """Modules trained in full next to the adapter; ``["norm"]`` (the final norm) lets a randomly initialised tiny
    student sharpen its output distribution, which low-rank updates alone barely can."""
    # Run
    seed: int = 0
    save_steps: int = 0
    """Write a checkpoint (adapter, optimizer, scheduler, RNG, data position) every N steps; 0 saves none."""
    save_total_limit: int | None = 2
    output_dir: str = "runs/mentor"
    resume: bool = False
    """Continue from the last complete checkpoint in the stage's output directory."""
    report_to: str | list[str] = "none"
    """Experiment trackers, passed to TRL: ``"trackio"`` (local-first: a project under ``$TRACKIO_DIR``, default
    ``~/.cache/huggingface/trackio``; view it with ``trackio show``), ``"tensorboard"``, ``"wandb"``, or a list."""
    project: str = "mentor-agents"
    """The trackio project the run logs to (wandb reads ``WANDB_PROJECT`` instead)."""
    logging_steps: int = 1
    use_cpu: bool | None = None
    """None picks CUDA when present, else CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them: less memory for more compute (with the
    shared-prefix loss, each segment is recomputed whole). Measured, GRPO 2 prompts x 4 on SmolLM2-135M: peak RSS
    7.1 -> 5.2 GB, loss part 34.3 -> 35.7 CPU s (examples/results/bench_grpo.json)."""
    bf16: bool = False
    """bf16 autocast on CPU for the loss forward and backward (needs native bf16: AVX512-BF16 or AMX; CUDA uses bf16
    whenever it supports it, this switch or not). Measured, GRPO 2 prompts x 4 on SmolLM2-135M: loss part 34.3 ->
    20.8 CPU s, peak RSS 5.6 GB. Opt-in: log-probs move by up to about 0.06 nats, and no learning run has shown yet
    that it does not hurt."""
    use_vllm: bool = False
    """Generate the GRPO rollouts' turns with a vLLM server that TRL keeps in sync with the policy (GPU; start it
    with ``trl vllm-serve --model BASE``), instead of the student's own ``generate``. One training process only."""
    vllm_mode: Literal["server"] = "server"
    """TRL's vLLM mode; only ``"server"`` is wired into the graph rollouts (not ``"colocate"``)."""
    vllm_server_base_url: str | None = None
    """The vLLM server's URL, e.g. ``"http://127.0.0.1:8000"``; None means TRL's default, ``http://0.0.0.0:8000``."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.reward not in REWARD_NAMES:
            raise ValueError(f"reward must be one of {', '.join(REWARD_NAMES)}, got {self.reward!r}")
        if self.bf16 and self.device_is_cpu and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise ValueError("bf16=True needs a CPU with native bf16 (AVX512-BF16 or AMX); this one has neither")
        if self.vllm_mode != "server":
            raise ValueError(f"vllm_mode must be 'server' (the only vLLM mode wired into the graph rollouts), got "
                             f"{self.vllm_mode!r}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be at least 2 for group-normalised advantages, got "
                             f"{self.num_generations}")

    @property
    def reward_fn(self) -> TeacherGuidedReward:
        return TeacherGuidedReward(
            name="sparse" if grpo_stage(self.method) == "sparse" else self.reward,
            argument_weight=self.argument_weight, order_weight=self.order_weight,
            efficiency_weight=self.efficiency_weight, max_calls_factor=self.max_calls_factor,
        )

    @property
    def device_is_cpu(self) -> bool:
        return (not torch.cuda.is_available()) if self.use_cpu is None else self.use_cpu

    def lora(self) -> LoraConfig:
        return LoraConfig(
            r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
            target_modules=self.lora_target_modules, modules_to_save=self.lora_modules_to_save, task_type="CAUSAL_LM",
        )


RolloutFn = Callable[[list[RewardReference], PreTrainedModel, PreTrainedTokenizerBase, TrainConfig], list[Rollout]]
"""Runs the agent once per reference (in order) with ``model`` as its chat model and returns token-exact rollouts:
``prompt_ids`` (the first model call's prompt), ``completion_ids``, ``completion_mask`` (1 = sampled) and
``logprobs``, and ``finished=False`` for a run cut off by ``config.max_turns``. With ``config.use_vllm`` the training
loop also passes ``backend=`` (a `mentor_agents.vllm_rollouts.VLLMClientBackend`) to generate the turns with."""


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
    sft_metrics: list[dict[str, Any]] = field(default_factory=list)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    """Held-out rollout metrics after training, when held-out references were given."""


# --------------------------------------------------------------------------------------------------------- loading


def load_model(model: str | os.PathLike[str] | PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None,
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and tokenizer by any name `load_student` takes, or ``model`` itself with its ``tokenizer``."""
    if isinstance(model, PreTrainedModel):
        if tokenizer is None:
            raise ValueError("pass the tokenizer along with a model object")
        return model, tokenizer
    loaded, prepared = load_student(model)
    return loaded, tokenizer if tokenizer is not None else prepared


def load_trained(result_or_adapter: TrainResult | str | os.PathLike[str], base_model: str | None = None,
                 ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The trained student (base model with its adapter) and tokenizer, from a `TrainResult` or an adapter dir."""
    if isinstance(result_or_adapter, TrainResult):
        adapter, base_model = result_or_adapter.adapter_dir, result_or_adapter.base_model
    else:
        adapter = Path(result_or_adapter)
        recover_dir(adapter)
        if base_model is None:
            base_model = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter)), AutoTokenizer.from_pretrained(str(adapter))


# ------------------------------------------------------------------------------------------------------------- SFT


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
    cpu = config.device_is_cpu
    args = SFTConfig(
        output_dir=str(out), learning_rate=config.sft_lr, num_train_epochs=config.sft_epochs,
        max_steps=config.sft_steps, per_device_train_batch_size=_per_device(config.sft_batch_size, "sft_batch_size"),
        lr_scheduler_type=config.sft_lr_scheduler,
        warmup_steps=0, logging_steps=config.logging_steps, report_to=config.report_to, project=config.project,
        seed=config.seed, data_seed=config.seed, use_cpu=cpu, bf16=_bf16(config),
        gradient_checkpointing=config.gradient_checkpointing,
        save_strategy="steps" if config.save_steps else "no", save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit, max_length=None, dataloader_num_workers=0,
    )
    trainer = SharedPrefixSFTTrainer(
        model=model, args=args, train_dataset=sft_dataset(traces, tokenizer), processing_class=tokenizer,
        peft_config=config.lora(), callbacks=[MetricsFile(out / "metrics.jsonl"), *callbacks],
    )
    _train(trainer, out, config.resume)
    return _finish(trainer, "sft", out, _name_of(model))


# ------------------------------------------------------------------------------------------------------------ GRPO


def grpo_dataset(references: Sequence[RewardReference]) -> Dataset:
    """One row per reference: the task text as the prompt, and the reference (JSON) for the reward."""
    if not references:
        raise ValueError("no references to train on")
    return Dataset.from_list([{"prompt": ref.task_input, "reference": ref.model_dump_json()} for ref in references])


def rollout_metrics(rollouts: Sequence[Rollout]) -> dict[str, float]:
    """Tool-call, invalid-call, turn and finish rates over ``rollouts``, and the count of invalid calls by name."""
    n = max(1, len(rollouts))
    invalid = Counter(call.label for r in rollouts for call in r.invalid_calls)
    return {
        "rollout/tool_call_rate": sum(bool(r.tool_calls) for r in rollouts) / n,
        "rollout/tool_calls": sum(len(r.tool_calls) for r in rollouts) / n,
        "rollout/invalid_call_rate": sum(bool(r.invalid_calls) for r in rollouts) / n,
        "rollout/turns": sum(r.turns for r in rollouts) / n,
        "rollout/finished": sum(r.finished for r in rollouts) / n,
        "rollout/prefill_fallbacks": sum(r.prefill_fallbacks for r in rollouts) / n,
        **{f"rollout/invalid_calls/{label}": count for label, count in invalid.most_common()},
    }


def score_rollouts(rollouts: Sequence[Rollout], references: Sequence[RewardReference],
                   reward: TeacherGuidedReward) -> tuple[list[RewardResult], dict[str, float]]:
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
            rollouts = rollout_fn(batch, model, trainer.processing_class, config, **vllm)
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


def make_reward_func(reward: TeacherGuidedReward, references: Sequence[RewardReference],
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
         output_dir: str | os.PathLike[str] | None = None, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """GRPO (TRL) with LoRA, rollouts from ``rollout_fn`` and the teacher-guided reward of ``config``."""
    model, tokenizer = load_model(model, tokenizer)
    out = Path(output_dir or Path(config.output_dir) / ("sparse" if config.method == "sparse" else "mentor"))
    cpu = config.device_is_cpu
    args = GRPOConfig(
        output_dir=str(out), learning_rate=config.lr, max_steps=config.steps, lr_scheduler_type="constant",
        warmup_steps=0,
        per_device_train_batch_size=_per_device(config.prompts_per_step * config.num_generations,
                                                "prompts_per_step * num_generations"),
        gradient_accumulation_steps=1, num_generations=config.num_generations,
        max_completion_length=config.max_completion_length, temperature=config.temperature, beta=config.beta,
        loss_type=config.loss_type, scale_rewards=config.scale_rewards, logging_steps=config.logging_steps,
        report_to=config.report_to, project=config.project, seed=config.seed, data_seed=config.seed, use_cpu=cpu,
        bf16=_bf16(config), gradient_checkpointing=config.gradient_checkpointing,
        save_strategy="steps" if config.save_steps else "no", save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit, dataloader_num_workers=0, use_vllm=config.use_vllm,
        vllm_mode=config.vllm_mode, vllm_server_base_url=config.vllm_server_base_url,
    )
    reward = config.reward_fn
    trainer = SharedPrefixGRPOTrainer(
        model=model, reward_funcs=make_reward_func(reward, references, out / "rollouts.jsonl"), args=args,
        train_dataset=grpo_dataset(references),
        processing_class=tokenizer, peft_config=config.lora(),
        rollout_func=make_rollout_func(rollout_fn, references, config),
        callbacks=[MetricsFile(out / "metrics.jsonl"), *callbacks],
    )
    _train(trainer, out, config.resume)
    return _finish(trainer, config.method, out, _name_of(model))


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, references: Sequence[RewardReference],
             rollout_fn: RolloutFn, config: TrainConfig) -> dict[str, float]:
    """One rollout per held-out reference: mean reward, its components, and the rollout rates."""
    was_training = model.training
    model.eval()
    try:
        rollouts = rollout_fn(list(references), model, tokenizer, config)
    finally:
        model.train(was_training)
    results, components = score_rollouts(rollouts, references, config.reward_fn)
    return {"reward": statistics.fmean(r.value for r in results), **components, **rollout_metrics(rollouts)}


# ----------------------------------------------------------------------------------------------------- entry point


def train(config: TrainConfig, model: str | os.PathLike[str] | PreTrainedModel,
          tokenizer: PreTrainedTokenizerBase | None = None, *, traces: Sequence[Trace] | None = None,
          references: Sequence[RewardReference] | None = None, held_out: Sequence[RewardReference] | None = None,
          rollout_fn: RolloutFn | None = None, sft_result: TrainResult | None = None) -> TrainResult:
    """Run ``config.method``: ``sft`` on ``traces``; ``sparse`` / ``mentor`` GRPO on ``references`` (built from the
    correct ``traces`` when not given); ``sft+mentor`` (``sft+sparse``) = SFT, merge the adapter into the base, then
    MENTOR (sparse) GRPO with a fresh adapter. ``sft_result``, a finished SFT run of the same model, is their warm
    start instead of training SFT again. ``held_out`` references are rolled out once each after training
    (``eval_metrics``).
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

    sft_metrics: list[dict[str, Any]] = []
    if config.method in SFT_FIRST:
        result = sft_result or sft(model, tokenizer, traces, config, out / "sft")
        if config.method == "sft":
            return _evaluated(result, held_out, rollout_fn, config)
        sft_metrics = result.metrics
        merged = out / "sft" / "merged"
        state = PartialState()
        if state.is_main_process:
            merge(result, merged)
        state.wait_for_everyone()
        model, tokenizer = str(merged), result.tokenizer
    result = grpo(model, tokenizer, references, rollout_fn, config, out / grpo_stage(config.method))
    result.sft_metrics = sft_metrics
    return _evaluated(result, held_out, rollout_fn, config)


def merge(result: TrainResult, out_dir: str | os.PathLike[str]) -> str:
    """Merge ``result``'s adapter into its base and save model and tokenizer to ``out_dir``; returns the dir."""
    merged = result.model.merge_and_unload() if isinstance(result.model, PeftModel) else result.model

    def save(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        result.tokenizer.save_pretrained(tmp)

    save_dir_atomically(Path(out_dir), save)
    return str(out_dir)


def _evaluated(result: TrainResult, held_out, rollout_fn, config: TrainConfig) -> TrainResult:
    if held_out and rollout_fn is not None:
        result.eval_metrics = evaluate(result.model, result.tokenizer, held_out, rollout_fn, config)
    return result


# ----------------------------------------------------------------------------------------------- runs, checkpoints


class MetricsFile(TrainerCallback):
    """Appends every log entry (with its step) to a JSONL file, flushed and fsynced per line."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        append_lines(self.path, [json.dumps({"step": state.global_step, **logs}) + "\n"])


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


def _train(trainer, out: Path, resume: bool) -> None:
    checkpoint = last_checkpoint(out) if resume else None
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
        return
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)


def _finished(checkpoint: Path) -> bool:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return 0 < state["max_steps"] <= state["global_step"]


def _kept_on_resume(line: str, step: int, keep_summary: bool) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:  # the partial last line of a killed run
        return False
    return entry["step"] <= step and (keep_summary or "train_runtime" not in entry)


def _finish(trainer, method: str, out: Path, base: str) -> TrainResult:
    adapter = out / "adapter"

    def save(tmp: Path) -> None:
        trainer.model.save_pretrained(tmp)
        trainer.processing_class.save_pretrained(tmp)

    if trainer.is_world_process_zero():
        save_dir_atomically(adapter, save)
        write_text_atomic(out / "train_config.json", json.dumps(
            {"method": method, "base_model": base, "global_step": trainer.state.global_step}, indent=2))
    trainer.accelerator.wait_for_everyone()
    return TrainResult(
        method=method, output_dir=out, adapter_dir=adapter, base_model=base, model=trainer.model,
        tokenizer=trainer.processing_class, metrics=list(trainer.state.log_history),
    )


def _name_of(model: PreTrainedModel) -> str:
    return model.config.name_or_path


def _per_device(batch: int, name: str) -> int:
    # WORLD_SIZE is set by `accelerate launch` / torchrun before the trainer exists.
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if batch % processes:
        raise ValueError(f"{name} = {batch} does not split evenly over {processes} processes")
    return batch // processes


def _bf16(config: TrainConfig) -> bool:
    return config.bf16 if config.device_is_cpu else torch.cuda.is_bf16_supported()
