"""Regression: a request's ``max_tokens`` must hold when it also sends ``tools`` (it was dropped by bind_tools)."""

import torch
from langchain_core.utils.function_calling import convert_to_openai_tool
from openai import OpenAI

from mentor_agents.demo.calculator import TOOLS
from mentor_agents.integrations.langgraph.student_model import StudentChatModel
from mentor_agents.integrations.openai.server import create_app, running_server
from mentor_agents.student import tiny_student_dir

torch.set_num_threads(1)


def test_max_tokens_applies_with_tools():
    model = StudentChatModel.from_pretrained(str(tiny_student_dir()), max_new_tokens=64)
    with running_server(create_app(model, "tiny")) as base_url:
        client = OpenAI(base_url=base_url, api_key="unused")
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "What is 3 plus 4?"}], max_tokens=3,
            tools=[convert_to_openai_tool(t) for t in TOOLS],
        )
    assert reply.usage.completion_tokens <= 3
