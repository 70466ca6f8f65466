"""An Ollama ``Modelfile`` for an exported GGUF: the same Hermes tool format as the student's chat template.

```bash
ollama create calc-student -f out/gguf/Modelfile
ollama run calc-student
```

``TEMPLATE`` is written in Ollama's Go-template language for the ChatML tools template (and its Phi-3 markup) that
`mentor_agents.chat_templates.prepare_tokenizer` installs, and for TRL's Qwen2.5 template: tools as JSON lines inside
``<tools>`` in the system turn, calls as ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``, results in
``<tool_response>`` inside a user turn. Ollama serialises each tool compactly where Jinja's ``tojson`` puts spaces
after separators; the model reads the same JSON either way. For any other chat template no TEMPLATE is written and
Ollama falls back to the GGUF's own template. ``tests/test_gguf.py`` renders TEMPLATE with Go's ``text/template``
against the chat template; Ollama itself was not run.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_SYSTEM = "You are a helpful assistant."

TOOLS_INSTRUCTIONS = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\n<tools>"
)
CALL_INSTRUCTIONS = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}"
    "\n</tool_call>"
)

# ChatML markup; `go_template` swaps in another role markup. `$last` / the next message follow Ollama's own
# templates (``slice $.Messages $i``), since Go templates have no arithmetic. No ``{{-`` trimming: every newline in
# the text is one the prompt needs.
CHATML_GO_TEMPLATE = (
    "{{ $system := or .System \"%(default)s\" }}"
    "{{ if .Tools }}<|im_start|>system\n{{ $system }}" + TOOLS_INSTRUCTIONS +
    "{{ range .Tools }}\n{{ . }}{{ end }}" + CALL_INSTRUCTIONS + "<|im_end|>\n"
    "{{ else }}<|im_start|>system\n{{ $system }}<|im_end|>\n{{ end }}"
    "{{ $prev := \"\" }}"
    "{{ range $i, $m := .Messages }}"
    "{{ $last := eq (len (slice $.Messages $i)) 1 }}"
    "{{ if eq .Role \"user\" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n"
    "{{ else if and (eq .Role \"assistant\") (not .ToolCalls) }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n"
    "{{ else if eq .Role \"assistant\" }}<|im_start|>assistant{{ if .Content }}\n{{ .Content }}{{ end }}"
    "{{ range .ToolCalls }}\n<tool_call>\n{\"name\": \"{{ .Function.Name }}\", \"arguments\": "
    "{{ .Function.Arguments }}}\n</tool_call>{{ end }}<|im_end|>\n"
    "{{ else if eq .Role \"tool\" }}{{ if ne $prev \"tool\" }}<|im_start|>user{{ end }}\n<tool_response>\n"
    "{{ .Content }}\n</tool_response>"
    "{{ if or $last (ne (index (slice $.Messages $i) 1).Role \"tool\") }}<|im_end|>\n{{ end }}"
    "{{ end }}"
    "{{ $prev = .Role }}"
    "{{ end }}<|im_start|>assistant\n"
)

PHI3_MARKUP = {"<|im_start|>system": "<|system|>", "<|im_start|>user": "<|user|>",
               "<|im_start|>assistant": "<|assistant|>", "<|im_end|>": "<|end|>"}


def go_template(chat_template: str) -> str | None:
    """The Ollama TEMPLATE matching ``chat_template``, or None when it is not one of the Hermes tools templates."""
    from mentor_agents.chat_templates import CHATML_TOOLS_TEMPLATE, PHI3_TOOLS_TEMPLATE, QWEN2_5_TEMPLATE

    if chat_template == CHATML_TOOLS_TEMPLATE:
        return CHATML_GO_TEMPLATE % {"default": DEFAULT_SYSTEM}
    if chat_template == QWEN2_5_TEMPLATE:
        return CHATML_GO_TEMPLATE % {"default": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."}
    if chat_template == PHI3_TOOLS_TEMPLATE:
        template = CHATML_GO_TEMPLATE % {"default": DEFAULT_SYSTEM}
        for chatml, phi3 in PHI3_MARKUP.items():
            template = template.replace(chatml, phi3)
        return template
    return None


def modelfile(gguf_file: str, tokenizer, system: str | None = None) -> str:
    """The text of a Modelfile: ``FROM``, ``TEMPLATE`` (when known), ``PARAMETER stop`` per end marker, ``SYSTEM``."""
    from mentor_agents.chat_templates import end_markers

    lines = [f"FROM ./{gguf_file}", ""]
    template = go_template(tokenizer.chat_template or "")
    if template is None:
        lines += ["# The student's chat template has no Ollama TEMPLATE here: Ollama uses the GGUF's own.", ""]
    else:
        lines += [f'TEMPLATE """{template}"""', ""]
    lines += [f'PARAMETER stop "{marker}"' for marker in end_markers(tokenizer)]
    lines += ["PARAMETER temperature 0"]
    if system:
        lines += ["", f'SYSTEM """{system}"""']
    return "\n".join(lines) + "\n"


def write_modelfile(path: str | Path, gguf_file: str, tokenizer, system: str | None = None) -> Path:
    """Write `modelfile` to ``path``."""
    path = Path(path)
    path.write_text(modelfile(gguf_file, tokenizer, system))
    return path
