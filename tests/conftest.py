"""Shared test setup: the tests folder is importable (for `forcing`), and the tiny student fixture."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mentor_agents.student import load_student  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny random Qwen2 student (model, tokenizer), built offline."""
    return load_student("tiny", cache_dir=tmp_path_factory.mktemp("cache"))
