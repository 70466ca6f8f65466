"""Students built from scratch: a tiny random model and a byte-level BPE tokenizer trained offline in seconds.

``make_tiny_student`` builds a tiny random Qwen2 with its own byte-level BPE tokenizer offline in about a second,
for tests and CPU demos. Its chat template is the exact text of TRL's ``qwen2_5.jinja``, so TRL and
``tokenizer.parse_response`` recognise it. ``make_fitted_student`` builds a tiny random Llama whose tokenizer is
fitted to one agent's own conversations.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX

from mentor_agents.chat_templates import QWEN2_5_TEMPLATE

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


def train_chat_tokenizer(render: Callable[[PreTrainedTokenizerFast], list[str]], split: str,
                         vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the ChatML tools template (TRL's ``qwen2_5.jinja``), trained on the texts
    ``render`` makes with an untrained one: rendered through the real chat template, the merges fit the text the
    model will see. ``split`` is the regex that cuts text into pieces that never merge across."""

    def backend() -> Tokenizer:
        bpe = Tokenizer(models.BPE())
        bpe.normalizer = normalizers.NFC()
        bpe.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
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

    texts = render(wrap(backend()))
    bpe = backend()
    bpe.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ))
    return wrap(bpe)


def save_random_model(out_dir: str | Path, model_class: type, config: Any, tokenizer: PreTrainedTokenizerFast,
                      seed: int) -> Path:
    """A ``model_class(config)`` initialised from ``seed``, sampling by default, saved with ``tokenizer``."""
    import torch

    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True,
        temperature=1.0, top_p=1.0, max_new_tokens=64,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _synthetic_texts(renderer: PreTrainedTokenizerFast) -> list[str]:
    """The fixed corpus of `make_tiny_student`'s tokenizer: calculator dialogues rendered by ``renderer``, numbers,
    and a JSON call."""
    rng = random.Random(CORPUS_SEED)
    tools = [_tool_schema(name, desc) for name, (_, desc, _) in sorted(_OPS.items())]
    texts = []
    for i, messages in enumerate(_synthetic_dialogues(rng)):
        texts.append(renderer.apply_chat_template(messages, tools=tools if i % 3 else None, tokenize=False))
    texts += [" ".join(str(rng.randint(0, 10**6)) for _ in range(20)) for _ in range(20)]
    texts.append(json.dumps({"name": "lookup", "arguments": {"query": "text", "n": 3.5, "flag": True}}))
    return texts


def make_tiny_student(out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny random Qwen2 student (about 0.5M parameters) with its own tokenizer into ``out_dir``.

    Offline and deterministic given ``seed``; takes about a second. The directory loads with
    ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` and with `load_student`.
    """
    # transformers 5 rebuilds the tokenizer of a ``qwen2`` model directory as ``Qwen2Tokenizer`` with Qwen2's own
    # normalizer and pre-tokenizer, so train with exactly those to keep save/load token-exact. Qwen2's split regex
    # already puts every digit in its own piece, which makes copying numbers easy for a tiny model.
    tokenizer = train_chat_tokenizer(_synthetic_texts, QWEN2_PRETOKENIZE_REGEX, TINY_VOCAB)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return save_random_model(out_dir, Qwen2ForCausalLM, config, tokenizer, seed)


@dataclass
class FittedStudentConfig:
    """Size of the fitted student: built from scratch for one agent by `make_fitted_student`."""

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
                        seed: int = 0, config: FittedStudentConfig | None = None) -> Path:
    """Build the fitted student: a tiny random model whose tokenizer is fitted to one agent's own conversations,
    into ``out_dir``.

    ``conversations`` are ``(messages, tools)`` pairs (OpenAI-format messages, e.g. teacher traces), rendered
    through the ChatML tools template to train a byte-level BPE. With the calculator agent a whole conversation
    (system prompt, 12 tool schemas, calls, results) is about 120 tokens instead of about 1,700 with
    `make_tiny_student`'s generic tokenizer, which makes training on CPU practical.

    The model is a Llama (attention bias, untied embeddings): transformers reloads the tokenizer of a ``qwen2``
    directory with Qwen2's own pre-tokenizer, which would undo the fitted one. Train it with LoRA adapters that keep
    the other modules trained in full (``lora_modules_to_save``), since nothing in it is pretrained.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if not conversations:
        raise ValueError("make_fitted_student needs at least one (messages, tools) conversation to fit the tokenizer")
    config = config or FittedStudentConfig()

    def render(renderer: PreTrainedTokenizerFast) -> list[str]:
        return [renderer.apply_chat_template(messages, tools=tools or None, tokenize=False)
                for messages, tools in conversations]

    tokenizer = train_chat_tokenizer(render, FITTED_SPLIT, config.vocab_size)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=4 * config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads, max_position_embeddings=8192, attention_bias=True,
        tie_word_embeddings=False, initializer_range=config.initializer_range, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return save_random_model(out_dir, LlamaForCausalLM, model_config, tokenizer, seed)


FITTED_FULL_MODULES = ["embed_tokens", "lm_head", "q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
"""`TrainConfig.lora_modules_to_save` for a `make_fitted_student` model, with ``lora_target_modules=["o_proj"]``:
every weight trains in full (a random model has nothing for a low-rank update to adapt), and the result still
saves, merges and loads like any LoRA adapter."""
