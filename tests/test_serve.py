"""Serving a saved student: `mentor serve` with the real openai client and ChatOpenAI in a create_agent graph,
streaming tool-call deltas, bad requests, the API key, base + adapter without merging, and 32 concurrent clients."""

import json
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from forcing import ForceText
from servers import free_port, mentor_process
from langchain_openai import ChatOpenAI
from peft import LoraConfig, get_peft_model
from transformers import LogitsProcessor, LogitsProcessorList

from mentor_agents.export import ModelCard, export_student
from mentor_agents.integrations.langgraph import StudentChatModel
from mentor_agents.demo.calculator import build_agent
from mentor_agents.integrations.openai.server import create_app, running_server
from mentor_agents.chat_templates import stop_token_ids

torch.set_num_threads(1)

CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 2}}\n</tool_call>'
ANSWER = "The sum is 5. Answer: 5"
TOOL_SCHEMAS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}]


@pytest.fixture(scope="module")
def saved_student(tiny, tmp_path_factory):
    model, tokenizer = tiny
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("student") / "calc-student"
    export_student(peft_model, tokenizer, out, ModelCard(base_model=str(model.config.name_or_path), method="mentor"))
    return out


@pytest.fixture(scope="module")
def forced_server(saved_student):
    """The saved student, generating through its real `generate`, forced to call `add` and then answer."""
    student = StudentChatModel.from_pretrained(str(saved_student), max_new_tokens=64)
    student.logits_processor = LogitsProcessorList([ForceText(student.tokenizer, CALL, ANSWER)])
    with running_server(create_app(student, "calc-student")) as url:
        yield url


@pytest.fixture(scope="module")
def mentor_serve(saved_student):
    """`mentor serve DIR --adapter` as a user runs it: a subprocess on a free loopback port, with an API key."""
    port = free_port()
    env = {**os.environ, "STUDENT_KEY": "sekret", "OMP_NUM_THREADS": "1"}
    args = ["serve", str(saved_student), "--port", str(port), "--adapter", "--api-key-env", "STUDENT_KEY",
            "--max-new-tokens", "8", "--concurrency", "4"]
    with mentor_process(args, port, env):
        yield f"http://127.0.0.1:{port}/v1"


def test_openai_client_plain_tools_and_streaming(forced_server):
    client = openai.OpenAI(base_url=forced_server, api_key="unused")
    reply = client.chat.completions.create(model="calc-student", messages=[{"role": "user", "content": "3 plus 2?"}],
                                           tools=TOOL_SCHEMAS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "add"
    assert json.loads(call.function.arguments) == {"a": 3, "b": 2}
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0

    follow_up = client.chat.completions.create(model="calc-student", tools=TOOL_SCHEMAS, messages=[
        {"role": "user", "content": "3 plus 2?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "add", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "5"},
    ])
    assert follow_up.choices[0].message.content == ANSWER and follow_up.choices[0].finish_reason == "stop"

    chunks = list(client.chat.completions.create(model="calc-student", tools=TOOL_SCHEMAS, stream=True,
                                                 messages=[{"role": "user", "content": "3 plus 2?"}]))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert streamed[0].function.name == "add" and streamed[0].id.startswith("call_")
    assert json.loads("".join(tc.function.arguments or "" for tc in streamed)) == {"a": 3, "b": 2}


def test_chat_openai_runs_the_calculator_agent_against_the_served_student(forced_server):
    served_student = ChatOpenAI(base_url=forced_server, api_key="unused", model="calc-student", max_retries=0)
    out = build_agent(served_student).invoke({"messages": [("user", "What is 3 plus 2?")]})
    kinds = [m.type for m in out["messages"]]
    assert kinds == ["human", "ai", "tool", "ai"]
    assert out["messages"][2].content.strip() == "5"  # the real add tool ran
    assert out["messages"][-1].content == ANSWER


def test_mentor_serve_adapter_key_errors_and_32_concurrent_clients(mentor_serve):
    base = mentor_serve
    assert httpx.get(base.removesuffix("/v1") + "/health").json()["status"] == "ok"
    assert httpx.get(f"{base}/models").status_code == 401
    headers = {"Authorization": "Bearer sekret"}
    assert httpx.get(f"{base}/models", headers=headers).json()["data"][0]["id"] == "calc-student"

    bad = [
        (b"{not json", 400), (json.dumps({"model": "other", "messages": [{"role": "user", "content": "x"}]}), 404),
        (json.dumps({"model": "calc-student", "messages": [{"role": "wizard", "content": "x"}]}), 400),
        (json.dumps({"model": "calc-student", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}), 400),
        (b"{" + b" " * 2_000_000 + b"}", 413),
    ]
    for body, status in bad:
        response = httpx.post(f"{base}/chat/completions", content=body, headers=headers, timeout=30)
        assert response.status_code == status, (body[:40], response.text)
        assert set(response.json()["error"]) >= {"message", "type"}

    client = openai.OpenAI(base_url=base, api_key="sekret", max_retries=0, timeout=300)

    def ask(i: int) -> str:
        reply = client.chat.completions.create(model="calc-student", max_tokens=4,
                                               messages=[{"role": "user", "content": f"What is {i} plus 1?"}])
        return reply.choices[0].finish_reason

    with ThreadPoolExecutor(32) as pool:
        reasons = list(pool.map(ask, range(32)))
    assert len(reasons) == 32 and set(reasons) <= {"stop", "length", "tool_calls"}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()


class CountTokens(LogitsProcessor):
    """Counts the tokens the served model generates (every request), and those generated since the test's clients
    dropped; never lets the model end a turn early."""

    def __init__(self, end_ids: list[int]):
        self.end_ids, self.count, self.started = end_ids, 0, threading.Event()
        self.since_drop: int | None = None

    def __call__(self, input_ids, scores):
        self.count += 1
        if self.since_drop is not None:
            self.since_drop += 1
        self.started.set()
        scores[:, self.end_ids] = float("-inf")
        return scores


@pytest.fixture
def counted_server(tiny):
    model, tokenizer = tiny
    counter = CountTokens(stop_token_ids(tokenizer, model))
    student = StudentChatModel(model=model, tokenizer=tokenizer, max_new_tokens=16,
                               logits_processor=LogitsProcessorList([counter]))
    with running_server(create_app(student, "s", max_tokens_limit=10_000, max_concurrency=1)) as url:
        yield url, counter


def long_request(text: str, stream: bool) -> dict:
    return {"model": "s", "messages": [{"role": "user", "content": text}], "max_tokens": 1500, "stream": stream}


def work_after_drop(url: str, counter: CountTokens) -> int:
    """Tokens generated after the clients dropped, found once a fresh 4-token request (which has to wait for the
    only slot) has been served."""
    fresh = httpx.post(f"{url}/chat/completions", timeout=600,
                       json={"model": "s", "messages": [{"role": "user", "content": "e"}], "max_tokens": 4})
    assert fresh.status_code == 200 and fresh.json()["usage"]["completion_tokens"] == 4
    work, counter.since_drop = counter.since_drop - 4, None
    return work


def test_generation_stops_for_clients_that_disconnected(counted_server):
    """Clients that drop mid-request (streaming or not) leave no work behind: the running generation stops at its
    next token, queued ones never run, and only then is the slot free for a fresh request (issue 15, case 2; the
    server used to generate all 1500 tokens for each of them)."""
    url, counter = counted_server
    with httpx.Client(timeout=60) as first, httpx.Client(timeout=60) as queued:
        streams = []
        for client, text in ((first, "a"), (queued, "b"), (queued, "c")):
            streams.append(client.stream("POST", f"{url}/chat/completions", json=long_request(text, True)))
            next(streams[-1].__enter__().iter_lines())  # the role event: the request is in
            assert counter.started.wait(60)  # the first one is generating
        counter.since_drop = 0
        for stream in reversed(streams):
            stream.__exit__(None, None, None)
    assert work_after_drop(url, counter) < 100  # a few tokens until the disconnect is seen, not 3 x 1500

    counter.started.clear()
    host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
    body = json.dumps(long_request("d", False)).encode()
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert counter.started.wait(60)
        counter.since_drop = 0
    assert work_after_drop(url, counter) < 100


def test_prompt_plus_max_tokens_beyond_the_context_is_refused_before_any_compute(counted_server):
    url, counter = counted_server
    context = 8192  # the tiny student's max_position_embeddings
    for body in ({"model": "s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": context},
                 {"model": "s", "messages": [{"role": "user", "content": "hello " * context}], "max_tokens": 1},
                 {"model": "s", "messages": [{"role": "user", "content": "hello " * context}], "stream": True}):
        reply = httpx.post(f"{url}/chat/completions", json=body, timeout=120)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["code"] == "context_length_exceeded" and str(context) in error["message"], error
    assert counter.count == 0
    with pytest.raises(openai.BadRequestError, match="context"):
        openai.OpenAI(base_url=url, api_key="x", max_retries=0).chat.completions.create(
            model="s", messages=[{"role": "user", "content": "hi"}], max_tokens=context)
    ok = httpx.post(f"{url}/chat/completions", timeout=120,
                    json={"model": "s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert ok.status_code == 200 and counter.count == 2
