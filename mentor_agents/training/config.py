"""`TrainConfig`: every training setting, in TRL's groups (SFT, GRPO, LoRA, run), and where each method trains.

A method trains in one or two stages, each in its own directory under ``output_dir`` (`stages`): ``sft`` for the
supervised stage, ``mentor`` or ``sparse`` for the GRPO stage. `method_dir` names a method's directory inside a run
directory (``train/<method_dir>/``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
from peft import LoraConfig
from trl import GRPOConfig, SFTConfig

from mentor_agents.errors import InvalidInputError
from mentor_agents.rewards import REWARD_NAMES, Reward
from mentor_agents.rollouts import RolloutSettings
from mentor_agents.student import native_bf16

Method = Literal["sft", "sparse", "mentor", "sft+sparse", "sft+mentor"]
METHODS: tuple[str, ...] = ("sft", "sparse", "mentor", "sft+sparse", "sft+mentor")
SFT_FIRST: tuple[str, ...] = ("sft", "sft+sparse", "sft+mentor")
"""The methods that train SFT first (``sft+*`` then run GRPO from the merged SFT model)."""


def grpo_stage(method: str) -> str:
    """The GRPO stage directory of ``method``: ``sparse`` for the sparse-reward methods, else ``mentor``."""
    return "sparse" if method in ("sparse", "sft+sparse") else "mentor"


def stages(method: str) -> tuple[str, ...]:
    """The stage directories ``method`` trains in, in order; the last one holds the final adapter."""
    if method == "sft":
        return ("sft",)
    return ("sft", grpo_stage(method)) if method in SFT_FIRST else (grpo_stage(method),)


def method_dir(name: str) -> str:
    """The directory of a trained method (or any named model) inside a run directory: ``sft+mentor`` ->
    ``sft_mentor``."""
    return name.replace(" ", "_").replace("+", "_").replace("/", "_").replace(",", "_")


@dataclass
class SFTSettings:
    """Supervised fine-tuning on the teacher traces (TRL's `SFTConfig`)."""

    sft_lr: float = 2e-3
    sft_epochs: float = 1.0
    sft_steps: int = -1
    """SFT optimiser steps; -1 runs ``sft_epochs`` epochs."""
    sft_batch_size: int = 8
    """Sequences per optimiser step over all processes (split among them under `accelerate launch`)."""
    sft_lr_scheduler: str = "constant"
    """Any transformers scheduler name; ``"cosine"`` decays to 0 over ``sft_steps`` and ends at a lower loss."""


@dataclass
class GRPOSettings:
    """GRPO against the teacher-guided reward (TRL's `GRPOConfig`), and how its rollouts run (`rollout`)."""

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
    use_vllm: bool = False
    """Generate the GRPO rollouts' turns with a vLLM server that TRL keeps in sync with the policy (GPU; start it
    with ``trl vllm-serve --model BASE``), instead of the student's own ``generate``. One training process only."""
    vllm_mode: Literal["server"] = "server"
    """TRL's vLLM mode; only ``"server"`` is wired into the graph rollouts (not ``"colocate"``)."""
    vllm_server_base_url: str | None = None
    """The vLLM server's URL, e.g. ``"http://127.0.0.1:8000"``; None means TRL's default, ``http://0.0.0.0:8000``."""

    @property
    def rollout(self) -> RolloutSettings:
        """What a ``rollout_fn`` needs: the turn cap, the per-turn token budget and the sampling temperature."""
        return RolloutSettings(max_turns=self.max_turns, max_new_tokens=self.max_new_tokens,
                               temperature=self.temperature)


@dataclass
class LoRASettings:
    """The LoRA adapter every method trains (peft's `LoraConfig`)."""

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str | list[str] = "all-linear"
    lora_modules_to_save: list[str] | None = None
    """Modules trained in full next to the adapter; ``["norm"]`` (the final norm) lets a randomly initialised tiny
    student sharpen its output distribution, which low-rank updates alone barely can."""
    lora_layers: list[int] | None = None
    """Only these decoder layers get adapters (peft's ``layers_to_transform``); None: every layer. Adapting only the
    top layers saves the backward pass through the layers below (about a third of a step's CPU time at half)."""

    def lora(self) -> LoraConfig:
        return LoraConfig(
            r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
            target_modules=self.lora_target_modules, modules_to_save=self.lora_modules_to_save,
            layers_to_transform=self.lora_layers, task_type="CAUSAL_LM",
        )


@dataclass
class RunSettings:
    """Seed, checkpoints, trackers and hardware, shared by both stages."""

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
    micro_batch_tokens: int = 1024
    """Padded tokens of the rows that share a prompt (a GRPO group) computed together in the shared-prefix loss;
    longer groups are split, longest rows first. With ``gradient_checkpointing`` it bounds the backward pass's
    activations: about 2.3 MB per token on SmolLM2-135M in fp32 (a group of 8 with one long rollout, unsplit,
    peaked at 13-14 GB)."""
    bf16: bool = False
    """bf16 autocast on CPU for the loss forward and backward (needs native bf16: AVX512-BF16 or AMX; CUDA uses bf16
    whenever it supports it, this switch or not). Measured, GRPO 2 prompts x 4 on SmolLM2-135M: loss part 34.3 ->
    20.8 CPU s, peak RSS 5.6 GB. Opt-in: log-probs move by up to about 0.06 nats, and no learning run has shown yet
    that it does not hurt."""

    @property
    def device_is_cpu(self) -> bool:
        return (not torch.cuda.is_available()) if self.use_cpu is None else self.use_cpu

    def trainer_args(self) -> dict:
        """The TRL arguments both stages take from the run settings."""
        return dict(
            logging_steps=self.logging_steps, report_to=self.report_to, project=self.project, seed=self.seed,
            data_seed=self.seed, use_cpu=self.device_is_cpu,
            bf16=self.bf16 if self.device_is_cpu else torch.cuda.is_bf16_supported(),
            gradient_checkpointing=self.gradient_checkpointing, save_strategy="steps" if self.save_steps else "no",
            save_steps=self.save_steps or 500, save_total_limit=self.save_total_limit, dataloader_num_workers=0,
            warmup_steps=0,
        )


@dataclass
class TrainConfig(RunSettings, LoRASettings, GRPOSettings, SFTSettings):
    """Every training setting: the method and its reward, then the groups `SFTSettings`, `GRPOSettings`,
    `LoRASettings` and `RunSettings` (all keyword arguments of this one class). The defaults train the tiny test
    student on CPU in seconds.

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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.reward not in REWARD_NAMES:
            raise InvalidInputError(f"reward must be one of {', '.join(REWARD_NAMES)}, got {self.reward!r}")
        if self.bf16 and self.device_is_cpu and not native_bf16():
            raise InvalidInputError("bf16=True needs a CPU with native bf16 (AVX512-BF16 or AMX); this one has neither")
        if self.vllm_mode != "server":
            raise InvalidInputError(f"vllm_mode must be 'server' (the only vLLM mode wired into the graph rollouts), got "
                             f"{self.vllm_mode!r}")
        if self.micro_batch_tokens < 1:
            raise InvalidInputError(f"micro_batch_tokens must be at least 1, got {self.micro_batch_tokens}")
        if self.num_generations < 2:
            raise InvalidInputError(f"num_generations must be at least 2 for group-normalised advantages, got "
                             f"{self.num_generations}")

    @property
    def reward_fn(self) -> Reward:
        return Reward(
            name="sparse" if grpo_stage(self.method) == "sparse" else self.reward,
            argument_weight=self.argument_weight, order_weight=self.order_weight,
            efficiency_weight=self.efficiency_weight, max_calls_factor=self.max_calls_factor,
        )

    def sft_args(self, output_dir: str | os.PathLike[str]) -> SFTConfig:
        """TRL's `SFTConfig` for the SFT stage writing to ``output_dir``."""
        return SFTConfig(
            output_dir=str(output_dir), learning_rate=self.sft_lr, num_train_epochs=self.sft_epochs,
            max_steps=self.sft_steps, per_device_train_batch_size=per_device(self.sft_batch_size, "sft_batch_size"),
            lr_scheduler_type=self.sft_lr_scheduler, max_length=None, **self.trainer_args(),
        )

    def grpo_args(self, output_dir: str | os.PathLike[str]) -> GRPOConfig:
        """TRL's `GRPOConfig` for the GRPO stage writing to ``output_dir``."""
        return GRPOConfig(
            output_dir=str(output_dir), learning_rate=self.lr, max_steps=self.steps, lr_scheduler_type="constant",
            per_device_train_batch_size=per_device(self.prompts_per_step * self.num_generations,
                                                   "prompts_per_step * num_generations"),
            gradient_accumulation_steps=1, num_generations=self.num_generations,
            max_completion_length=self.max_completion_length, temperature=self.temperature, beta=self.beta,
            loss_type=self.loss_type, scale_rewards=self.scale_rewards, use_vllm=self.use_vllm,
            vllm_mode=self.vllm_mode, vllm_server_base_url=self.vllm_server_base_url, **self.trainer_args(),
        )


def reward_description(config: TrainConfig, stage: str) -> str | None:
    """The reward a stage trained against, with its weights, as the model card states it; None for SFT."""
    return None if stage == "sft" else repr(config.reward_fn).replace("Reward", "")


def per_device(batch: int, name: str) -> int:
    """``batch`` split over the processes of ``accelerate launch`` / torchrun (WORLD_SIZE is set before the
    trainer exists)."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if batch % processes:
        raise InvalidInputError(f"{name} = {batch} does not split evenly over {processes} processes")
    return batch // processes
