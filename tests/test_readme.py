"""Every ```python block of README.md runs as written, in order, in one namespace.

Stand-ins, and nothing else: the calculator example's scripted teacher and tools for the README's ``teacher_llm`` and
``tools``; a real OpenAI-compatible server serving that teacher on the README's endpoint URL (with
``OPENAI_API_KEY`` set in the environment, as the README says); and the tiny student for the named students
(``STUDENTS``). Everything else in a block runs literally, in a temporary directory."""

import re
import socket
from pathlib import Path

import pytest
import torch

from mentor_agents.demo.calculator import TOOLS, ScriptedCalculatorTeacher
from mentor_agents.integrations.openai.server import create_app, running_server

torch.set_num_threads(1)

README = Path(__file__).resolve().parents[1] / "README.md"
STUDENTS = {'student="qwen2.5-0.5b-instruct"': 'student="tiny"',
            'student="smollm2-135m-instruct"': 'student="tiny"'}
"""The only edit to a block: real students are too heavy for CI."""
ENDPOINT = ("127.0.0.1", 11434, "qwen2.5-coder:1.5b")
"""The teacher endpoint the README names: our OpenAI server with the scripted teacher listens there."""


def blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def with_tiny_students(code: str) -> str:
    for real, tiny in STUDENTS.items():
        code = code.replace(real, tiny)
    return code


def test_readme_names_the_students_it_swaps_and_the_endpoint():
    text = "\n".join(blocks())
    assert len(blocks()) >= 5
    assert all(real in text for real in STUDENTS), "a README block changed its student; update STUDENTS"
    assert f'base_url="http://localhost:{ENDPOINT[1]}/v1", model="{ENDPOINT[2]}"' in text


def test_every_python_block_runs(tmp_path, monkeypatch):
    host, port, model = ENDPOINT
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            pytest.skip(f"port {port} is taken (an Ollama server?): the README's teacher endpoint cannot be served")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "local-server-needs-none")  # the README: read from the environment
    namespace = {"teacher_llm": ScriptedCalculatorTeacher(), "tools": TOOLS}
    with running_server(create_app(ScriptedCalculatorTeacher(), model), host, port):
        for number, block in enumerate(blocks(), start=1):
            exec(compile(with_tiny_students(block), f"README.md python block {number}", "exec"), namespace)
    assert "| teacher | test |" in namespace["student"].report
    assert (tmp_path / "out" / "my-student" / "adapter").is_dir()
    assert namespace["shop"].metrics["evaluation"]["teacher|test"]["success"] == 1.0
