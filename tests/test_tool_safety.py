"""The student can only call the agent's declared tools, with arguments validated against the tool's schema before
anything runs; and no module passes anything to eval or exec.

The tiny student's real ``generate`` is forced (tests/forcing.py) to write the call under test; the graph is a real
``create_agent`` graph whose tools count their executions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from forcing import ForceText
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from transformers import LogitsProcessorList

from mentor_agents.integrations.langgraph import StudentChatModel

torch.set_num_threads(1)

RAN: list[str] = []


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    RAN.append("add")
    return a + b


@tool
def delete_everything(confirm: bool) -> str:
    """A dangerous tool that exists in the process but is not given to the agent."""
    RAN.append("delete_everything")
    return "deleted"


def run_forced(tiny, call: str):
    model, tokenizer = tiny
    processor = LogitsProcessorList([ForceText(tokenizer, call, "Answer: done")])
    student = StudentChatModel(model=model, tokenizer=tokenizer, logits_processor=processor, max_new_tokens=64)
    RAN.clear()
    return create_agent(student, [add], system_prompt="Use the tools.").invoke({"messages": [("user", "Go.")]})


@pytest.mark.parametrize("name", ["delete_everything", "__import__", "eval"])
def test_a_call_to_an_undeclared_tool_is_invalid_and_never_runs(tiny, name):
    out = run_forced(tiny, f'<tool_call>\n{{"name": "{name}", "arguments": {{"confirm": true}}}}\n</tool_call>')
    ai = out["messages"][1]
    assert isinstance(ai, AIMessage) and ai.tool_calls == []
    assert name in ai.invalid_tool_calls[0]["error"]
    assert not any(isinstance(m, ToolMessage) for m in out["messages"]) and RAN == []


@pytest.mark.parametrize("arguments, error", [
    ('{"a": "three", "b": 2}', "a: Input should be a valid number"),
    ('{"a": 3}', "b: Field required"),
    ('{"a": 3, "b": {"__class__": "os.system"}}', "b: Input should be a valid number"),
])
def test_arguments_off_the_schema_are_rejected_before_the_tool_runs(tiny, arguments, error):
    out = run_forced(tiny, f'<tool_call>\n{{"name": "add", "arguments": {arguments}}}\n</tool_call>')
    ai, result = out["messages"][1:3]
    assert [c["name"] for c in ai.tool_calls] == ["add"]  # a declared tool: the call reaches the tool node
    assert isinstance(result, ToolMessage) and result.status == "error" and error in result.content
    assert RAN == []  # ... which validated the arguments against the schema and ran nothing


def test_valid_arguments_run_the_tool_once(tiny):
    out = run_forced(tiny, '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 2}}\n</tool_call>')
    assert out["messages"][2].content == "5.0" and RAN == ["add"]


SOURCES = [p for folder in ("mentor_agents", "integrations") for p in
           sorted((Path(__file__).parent.parent / folder).rglob("*.py"))]


def test_no_module_calls_eval_or_exec():
    assert len(SOURCES) > 20
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            # eval/exec by name, or through the builtins module; ``model.eval()`` (torch's eval mode) is not this.
            direct = isinstance(node, ast.Name) and node.id in ("eval", "exec")
            via_builtins = (isinstance(node, ast.Attribute) and node.attr in ("eval", "exec")
                            and isinstance(node.value, ast.Name) and node.value.id in ("builtins", "__builtins__"))
            if direct or via_builtins:
                found.append(f"{path}:{node.lineno}")
    assert found == [], found
