"""Whether vLLM serves a saved LoRA adapter, and the exact ``vllm serve`` command that does.

```python
check = check_vllm_adapter("out/adapter")
check.problems        # [] when vLLM loads it
check.command         # vllm serve BASE --enable-lora --lora-modules student=out/adapter ... --tool-call-parser hermes
```

The rules are vLLM's own (``vllm/lora/peft_helper.py`` and the model's LoRA-capable linear layers): no
``modules_to_save``, no DoRA, no LoRA bias unless the server enables it, rank at most ``--max-lora-rank`` (16 unless
raised), and target modules among the attention and MLP projections. The student's calls are Hermes
``<tool_call>{json}</tool_call>`` blocks, which vLLM's ``hermes`` tool parser turns into ``tool_calls``. The chat
template is passed with ``--chat-template`` because vLLM otherwise uses the base model's, which for SmolLM2 or Phi-3
ignores tools.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

VLLM_LORA_MODULES = frozenset({
    "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj", "gate_up_proj",
})
"""Target modules vLLM applies LoRA to in Llama / Qwen2 / Qwen3 / Mistral / Phi-3 models."""
VLLM_DEFAULT_MAX_LORA_RANK = 16


@dataclass
class VLLMCheck:
    """What vLLM would refuse in an adapter (``problems``) and the command that serves it."""

    adapter_dir: Path
    base_model: str
    problems: list[str] = field(default_factory=list)
    command: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def check_vllm_adapter(adapter_dir: str | Path, name: str = "student") -> VLLMCheck:
    """Check ``adapter_dir/adapter_config.json`` against vLLM's LoRA rules and build the serve command."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    check = VLLMCheck(adapter_dir, config["base_model_name_or_path"])
    if config.get("modules_to_save"):
        check.problems.append(
            f"modules_to_save {config['modules_to_save']}: vLLM only serves adapters without fully trained modules "
            f"(\"vLLM only supports modules_to_save being None\"); serve the merged model instead: "
            f"`vllm serve {adapter_dir.parent / 'merged'}`")
    if config.get("use_dora"):
        check.problems.append("use_dora: vLLM does not support DoRA adapters; serve the merged model instead")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    # vLLM matches a target by its last name component, so full paths (``model.layers.0.mlp.down_proj``) pass.
    unsupported = sorted(t for t in set(targets) if t.rsplit(".", 1)[-1] not in VLLM_LORA_MODULES)
    if unsupported:
        check.problems.append(f"target_modules {unsupported}: vLLM applies LoRA only to "
                              f"{', '.join(sorted(VLLM_LORA_MODULES))}")
    flags = ["--enable-lora", "--lora-modules", f"{name}={adapter_dir}"]
    if config.get("bias", "none") != "none":
        check.problems.append(f"bias={config['bias']!r}: vLLM serves LoRA adapters without bias terms")
    if config["r"] > VLLM_DEFAULT_MAX_LORA_RANK:
        flags += ["--max-lora-rank", str(config["r"])]
    if (adapter_dir / "chat_template.jinja").is_file():
        flags += ["--chat-template", str(adapter_dir / "chat_template.jinja")]
    flags += ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    check.command = shlex.join(["vllm", "serve", check.base_model, *flags])
    return check
