"""Chat templates that render tools: the ChatML and Phi-3 tools templates installed for students whose own template
ignores tools, TRL's training variant with ``{% generation %}`` markers, and the end-of-turn tokens of a template.

Every loaded tokenizer goes through `prepare_tokenizer`: a chat template that renders tools is kept (with TRL's
response schema where TRL knows the template); one that ignores tools is replaced by a Hermes-style tools template in
the model's own role markup (ChatML or Phi-3).
"""

from __future__ import annotations

from pathlib import Path

import trl

from mentor_agents.errors import MentorError

QWEN2_5_TEMPLATE = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text(encoding="utf-8")


class StudentFormatError(MentorError, ValueError):
    """The student's chat template cannot render tool calls and no tools template can be installed for it."""


PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "mentor_probe_tool",
        "description": "Probe.",
        "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string"}}, "required": ["probe_arg"]},
    },
}

# TRL's qwen2_5.jinja with a neutral default system prompt: Hermes tools block in the system turn, calls as
# <tool_call>{json}</tool_call>, results as <tool_response> in a user turn.
CHATML_TOOLS_TEMPLATE = QWEN2_5_TEMPLATE.replace(
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", "You are a helpful assistant."
)
CHATML_TOOLS_TRAINING_TEMPLATE = (
    (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_training.jinja").read_text(encoding="utf-8")
    .replace("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", "You are a helpful assistant.")
)
"""`CHATML_TOOLS_TEMPLATE` with TRL's ``{% generation %}`` markers, for a loss on assistant tokens only."""


def training_chat_template(tokenizer) -> str:
    """The tokenizer's chat template with ``{% generation %}`` markers around assistant turns (TRL's, for the
    templates TRL knows and for the ChatML tools template installed here), else the template itself."""
    from trl.chat_template_utils import get_training_chat_template

    if tokenizer.chat_template == CHATML_TOOLS_TEMPLATE:
        return CHATML_TOOLS_TRAINING_TEMPLATE
    return get_training_chat_template(tokenizer) or tokenizer.chat_template


# The same in Phi-3 markup (<|system|>, <|user|>, <|assistant|>, <|end|>).
PHI3_TOOLS_TEMPLATE = (
    CHATML_TOOLS_TEMPLATE.replace("'<|im_start|>' + message.role", "'<|' + message.role + '|>'")
    .replace("<|im_start|>system", "<|system|>")
    .replace("<|im_start|>user", "<|user|>")
    .replace("<|im_start|>assistant", "<|assistant|>")
    .replace("<|im_end|>", "<|end|>")
)
assert "Alibaba" not in CHATML_TOOLS_TEMPLATE and "<|im_" not in PHI3_TOOLS_TEMPLATE


def hermes_response_template(start: str, end: str) -> dict:
    """A transformers response template for `CHATML_TOOLS_TEMPLATE`-style output between ``start`` and ``end``."""
    import re

    return {
        "defaults": {"role": "assistant"},
        "start_anchor": start,
        "fields": {
            "tool_calls": {
                "open": "<tool_call>",
                "close_pattern": r"</tool_call>\s*",
                "repeats": True,
                "content": "json",
                "transform": {"type": "function", "function": "{content}"},
            },
            "content": {"close_pattern": re.escape(end) + r"\s*", "content": "text"},
        },
    }


TOOLS_TEMPLATES = {
    # name: (required special tokens, chat template, response start, end marker)
    "chatml": (("<|im_start|>", "<|im_end|>"), CHATML_TOOLS_TEMPLATE, "<|im_start|>assistant\n", "<|im_end|>"),
    "phi3": (("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), PHI3_TOOLS_TEMPLATE, "<|assistant|>\n", "<|end|>"),
}


def renders_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template shows offered tools and assistant tool calls (with their arguments)."""
    import jinja2

    if not tokenizer.chat_template:
        return False
    call = {"type": "function", "function": {"name": "mentor_probe_tool", "arguments": {"probe_arg": "probe_value_7"}}}
    try:
        offered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hello"}], tools=[PROBE_TOOL], tokenize=False, add_generation_prompt=True)
        called = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "", "tool_calls": [call]},
             {"role": "tool", "name": "mentor_probe_tool", "content": "probe_result_9"}],
            tools=[PROBE_TOOL], tokenize=False)
    except (jinja2.TemplateError, TypeError, ValueError):
        return False
    return "mentor_probe_tool" in offered and "probe_value_7" in called and "probe_result_9" in called


def prepare_tokenizer(tokenizer):
    """Make ``tokenizer`` render and parse tool calls, in place, and return it.

    A template that renders tools is kept, and TRL's response schema is attached when TRL knows the template
    (Qwen2.5/3, Llama 3.1/3.2, ...); otherwise `parse_generation` parses the text. A template that ignores tools
    (SmolLM2, Phi-3) is replaced by a Hermes-style tools template in the model's own ChatML or Phi-3 markup.
    Raises `StudentFormatError` when neither applies.
    """
    import trl

    for _, template, start, end in TOOLS_TEMPLATES.values():
        if tokenizer.chat_template == template:
            tokenizer.response_template = hermes_response_template(start, end)
            return tokenizer
    if renders_tools(tokenizer):
        if getattr(tokenizer, "response_template", None) is None:
            try:
                trl.add_response_schema(tokenizer)
            except ValueError:
                pass  # unknown template: parse_generation falls back to text parsing
        return tokenizer
    vocab = tokenizer.get_vocab()
    for tokens, template, start, end in TOOLS_TEMPLATES.values():
        if all(token in vocab for token in tokens):
            tokenizer.chat_template = template
            tokenizer.response_template = hermes_response_template(start, end)
            return tokenizer
    raise StudentFormatError(
        f"the chat template of {getattr(tokenizer, 'name_or_path', 'this tokenizer')!r} does not render tools or tool "
        "calls, and its vocabulary has neither ChatML (<|im_start|>, <|im_end|>) nor Phi-3 (<|system|>, <|user|>, "
        "<|assistant|>, <|end|>) role tokens, so no tools template can be installed. Set tokenizer.chat_template to a "
        "template that renders `tools` and `tool_calls` (and tokenizer.response_template to parse them), or pick "
        "another student."
    )


def end_markers(tokenizer) -> list[str]:
    """Texts that end an assistant turn: the eos token and the template's end-of-turn token when present."""
    vocab = tokenizer.get_vocab()
    markers = [tokenizer.eos_token] if tokenizer.eos_token else []
    markers += [m for m in ("<|im_end|>", "<|end|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>") if m in vocab]
    return list(dict.fromkeys(markers))


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end generation: `end_markers` plus the model's generation-config eos ids."""
    ids = [tokenizer.convert_tokens_to_ids(m) for m in end_markers(tokenizer)]
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += eos if isinstance(eos, list) else [eos] if eos is not None else []
    return list(dict.fromkeys(i for i in ids if i is not None))
