"""Export a trained student: a PEFT adapter, a merged model directory, and a model card.

```
out/
  adapter/   LoRA adapter (PEFT format) + tokenizer; base_model_name_or_path is the portable base id
  merged/    plain safetensors model that AutoModelForCausalLM / AutoTokenizer load, with a chat template that
             renders tools, a response template for tool-call parsing, and a generation config
  README.md  model card
```
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from mentor_agents.files import save_dir_atomically
from mentor_agents.vllm_check import check_vllm_adapter


@dataclass
class ModelCard:
    """What a model card states about a student."""

    base_model: str
    method: str
    teacher: str | None = None
    traces: str | None = None
    """Where the teacher traces came from and how many were used."""
    reward: str | None = None
    """The reward name and its weights."""
    training_config: dict[str, Any] = field(default_factory=dict)
    evaluation: str | None = None
    """A markdown comparison table."""
    tools: list[str] = field(default_factory=list)

    @classmethod
    def from_stage(cls, adapter_dir: str | os.PathLike[str] | None, base_model: str, method: str,
                   evaluation: str | None = None) -> ModelCard:
        """The card of a trained adapter, from the ``train_config.json`` its training wrote beside it (teacher,
        traces, reward, tools and the full training config)."""
        from mentor_agents.training import stage_info

        info = stage_info(adapter_dir) if adapter_dir is not None else {}
        return cls(base_model=base_model, method=method, teacher=info.get("teacher"), traces=info.get("traces"),
                   reward=info.get("reward"), training_config=info.get("train_config", {}), evaluation=evaluation,
                   tools=info.get("tools", []))

    def render(self) -> str:
        tools = ", ".join(f"`{name}`" for name in self.tools) or "the tools of the agent it was trained in"
        config = json.dumps(self.training_config, indent=2, default=str)
        return f"""---
base_model: {self.base_model}
library_name: peft
tags: [mentor-agents, tool-calling, lora, distillation]
---

# Student distilled with mentor_agents

A LoRA student of `{self.base_model}` trained to act as a tool-calling agent, by `{self.method}`.

| | |
|---|---|
| base model | `{self.base_model}` |
| teacher | {self.teacher or "not recorded"} |
| teacher traces | {self.traces or "not recorded"} |
| reward | {self.reward or "none (supervised fine-tuning)"} |
| tools | {tools} |

## Use

```python
from mentor_agents.integrations.langgraph import StudentChatModel
model = StudentChatModel.from_pretrained("merged")      # or "adapter" (base + LoRA, not merged)
agent = create_agent(model, tools)                      # the same tools it was trained with
```

or `mentor serve .` for an OpenAI-compatible endpoint. `merged/` also loads with plain
`transformers.AutoModelForCausalLM` and `AutoTokenizer`; its chat template renders tools.

## Training configuration

```json
{config}
```

## Evaluation

{self.evaluation or "Not evaluated."}

## Intended use and limits

- Intended for the agent it was distilled from: the same system prompt, the same tool set, the same kind of
  requests. It learned from a teacher's traces, and its success outside that distribution is what the evaluation
  table above shows, nothing more.
- Small students make mistakes a large teacher does not: check tool arguments before running tools with side
  effects, and keep a verifier or a human in the loop where a wrong call is costly.
- It inherits the base model's licence and limits (`{self.base_model}`).
"""


def export_student(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike[str],
    card: ModelCard,
    generation: dict[str, Any] | None = None,
) -> Path:
    """Write ``adapter/``, ``merged/`` and ``README.md`` into ``out_dir``, replacing it atomically.

    ``card.base_model`` is written as the adapter's ``base_model_name_or_path``: pass the hub id (or a path that
    will exist where the adapter is loaded). Merging works on a copy, so ``model`` keeps its adapter; this needs
    memory for a second copy of the weights.
    """
    out = Path(out_dir)

    def save(staging: Path) -> None:
        adapter_dir = staging / "adapter"
        model.save_pretrained(adapter_dir)
        set_base_model_id(adapter_dir, card.base_model)
        tokenizer.save_pretrained(adapter_dir)

        merged: PreTrainedModel = copy.deepcopy(model).merge_and_unload()
        merged.generation_config = generation_config(tokenizer, merged.generation_config, generation)
        merged.config.name_or_path = card.base_model
        merged.save_pretrained(staging / "merged")
        tokenizer.save_pretrained(staging / "merged")

        (staging / "README.md").write_text(card.render())
        (staging / "mentor.json").write_text(json.dumps({"card": asdict(card)}, indent=2, default=str))

    save_dir_atomically(out, save)
    vllm = check_vllm_adapter(out / "adapter")
    if not vllm.ok:
        warnings.warn(f"{out / 'adapter'} will not load in vLLM with --enable-lora: {'; '.join(vllm.problems)}",
                      stacklevel=2)
    return out


def set_base_model_id(adapter_dir: Path, base_model: str) -> None:
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model
    config_path.write_text(json.dumps(config, indent=2))


def generation_config(
    tokenizer: PreTrainedTokenizerBase, current: GenerationConfig | None, overrides: dict[str, Any] | None
) -> GenerationConfig:
    config = copy.deepcopy(current) if current is not None else GenerationConfig()
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    return config

