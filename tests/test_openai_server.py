"""The OpenAI-compatible server, driven by the real `openai` client, `ChatOpenAI` and a real LangGraph agent."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI

from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent, make_tasks
from mentor_agents.integrations.openai.server import create_app, running_server

MODEL = "test-model"
ADD_TOOL = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"]}}}


class RuleChatModel(BaseChatModel):
    """Echoes the user; with tools bound, calls ``add(2, 3)`` and then reports the tool result; "boom" raises.

    It also records its settings and keyword arguments at each call, and the most calls it saw running at once.
    """

    temperature: float = 1.0
    max_new_tokens: int = 16
    calls: list[dict[str, Any]] = []
    concurrency: dict[str, int] = {"running": 0, "max": 0}  # shared with the per-request copies

    @property
    def _llm_type(self) -> str:
        return "rule-chat"

    def bind_tools(self, tools, **kwargs):
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.concurrency["running"] += 1
        self.concurrency["max"] = max(self.concurrency["max"], self.concurrency["running"])
        try:
            self.calls.append({**kwargs, "stop": stop, "messages": messages, "temperature": self.temperature,
                               "max_new_tokens": self.max_new_tokens})
            threading.Event().wait(0.01)  # give a concurrent request the chance to overlap
            last = messages[-1]
            if last.text == "boom":
                raise RuntimeError("the scripted model exploded")
            if isinstance(last, ToolMessage):
                message = AIMessage(f"The result is {last.text}.")
            elif kwargs.get("tools") and isinstance(last, HumanMessage):
                message = AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "call_1",
                                                     "type": "tool_call"}])
            else:
                message = AIMessage(f"echo: {last.text}")
            message.usage_metadata = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
            return ChatResult(generations=[ChatGeneration(message=message)])
        finally:
            self.concurrency["running"] -= 1


@pytest.fixture
def rule_model() -> RuleChatModel:
    return RuleChatModel()


@pytest.fixture
def base_url(rule_model):
    with running_server(create_app(rule_model, MODEL, max_body_bytes=20_000, max_tokens_limit=100)) as url:
        yield url


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0)


def test_plain_completion(base_url, rule_model):
    reply = client(base_url).chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        temperature=0.3, max_tokens=50,
    )
    choice = reply.choices[0]
    assert choice.message.content == "echo: hi" and choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    assert reply.model == MODEL and reply.id.startswith("chatcmpl-")
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (7, 3, 10)
    call = rule_model.calls[-1]
    assert call["temperature"] == 0.3 and call["max_new_tokens"] == 50 and call["stop"] is None
    assert [m.type for m in call["messages"]] == ["system", "human"]
    client(base_url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stop="x")
    call = rule_model.calls[-1]
    assert call["temperature"] == 1.0 and call["max_new_tokens"] == 16 and call["stop"] == ["x"]


def test_tool_call_round_trip(base_url, rule_model):
    api = client(base_url)
    messages = [{"role": "user", "content": "what is 2 + 3?"}]
    reply = api.chat.completions.create(model=MODEL, messages=messages, tools=[ADD_TOOL], tool_choice="auto")
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id == "call_1" and call.type == "function" and call.function.name == "add"
    assert json.loads(call.function.arguments) == {"a": 2, "b": 3}
    assert rule_model.calls[-1]["tools"][0]["function"]["name"] == "add"
    assert rule_model.calls[-1]["tool_choice"] == "auto"

    # The follow-up as ChatOpenAI sends it: arguments as a JSON string, a tool message without a name.
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": "call_1", "content": "5"}]
    reply = api.chat.completions.create(model=MODEL, messages=messages, tools=[ADD_TOOL])
    assert reply.choices[0].message.content == "The result is 5."
    history = rule_model.calls[-1]["messages"]
    assert history[1].tool_calls[0]["args"] == {"a": 2, "b": 3}
    assert history[2].tool_call_id == "call_1"

    # Arguments sent as an object are accepted too.
    messages[1]["tool_calls"][0]["function"]["arguments"] = {"a": 2, "b": 3}
    reply = httpx.post(f"{base_url}/chat/completions", json={"model": MODEL, "messages": messages})
    assert reply.status_code == 200, reply.text


def test_streaming_text_and_tool_call_deltas(base_url):
    api = client(base_url)
    chunks = list(api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                              stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hi"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == 10

    chunks = list(api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "add"}],
                                              tools=[ADD_TOOL], stream=True))
    pieces = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert pieces[0].id == "call_1" and pieces[0].function.name == "add"
    assert json.loads("".join(p.function.arguments or "" for p in pieces)) == {"a": 2, "b": 3}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_streaming_chat_openai_assembles_tool_calls(base_url):
    model = ChatOpenAI(base_url=base_url, model=MODEL, api_key="unused", max_retries=0, streaming=True)
    message = model.bind_tools([ADD_TOOL]).invoke("what is 2 + 3?")
    assert message.tool_calls == [{"name": "add", "args": {"a": 2, "b": 3}, "id": "call_1", "type": "tool_call"}]


@pytest.mark.parametrize("builder", ["create_agent", "stategraph"])
def test_chat_openai_drives_a_langgraph_agent(builder):
    tasks = make_tasks(4, seed=3)
    with running_server(create_app(ScriptedCalculatorTeacher(), "teacher")) as url:
        agent = build_agent(ChatOpenAI(base_url=url, model="teacher", api_key="unused", max_retries=0), builder)
        for task in tasks:
            messages = agent.invoke({"messages": [HumanMessage(task.input)]})["messages"]
            assert any(isinstance(m, ToolMessage) for m in messages)
            assert task.verdict(messages[-1].text) == "correct", (task.input, messages[-1].text)


HI = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize("body, status, param", [
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ({"model": "other", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"model": MODEL}, 400, "messages"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ({"model": MODEL, "messages": ["hi"]}, 400, "messages[0]"),
    ({"model": MODEL, "messages": [{"role": "tool", "content": "5"}]}, 400, "messages[0].tool_call_id"),
    ({"model": MODEL, "messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{not json"}}]}]},
     400, "messages[0].tool_calls[0].function.arguments"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content[0].type"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 101}, 400, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}, 400,
     "max_completion_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": ["add"]}, 400, "tools[0]"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
    # Wrong types at each field answered 500 (some as plain text, closing the connection) before the body was a
    # typed model (issue 15, case 7).
    (dict(HI, stop=5), 400, "stop"),
    (dict(HI, stop=[1]), 400, "stop[0]"),
    ({"model": MODEL, "messages": [{"role": "assistant", "tool_calls": 5}]}, 400, "messages[0].tool_calls"),
    ({"model": MODEL, "messages": [{"role": "assistant", "tool_calls": [
        {"id": 5, "type": "function", "function": {"name": "add", "arguments": "{}"}}]}]}, 400,
     "messages[0].tool_calls[0].id"),
    (dict(HI, tools=[{"function": {}}]), 400, "tools[0].function.name"),
    (dict(HI, tools=[{"type": "function", "function": {"description": "no name"}}]), 400, "tools[0].function.name"),
    (dict(HI, tools=["add"]), 400, "tools[0]"),
    (dict(HI, tools=[ADD_TOOL], tool_choice={"function": "add"}), 400, "tool_choice.function"),
    (dict(HI, tools=[ADD_TOOL], tool_choice={"function": None}), 400, "tool_choice.function"),
    (dict(HI, stream=True, stream_options="x"), 400, "stream_options"),
    (dict(HI, stream=True, stream_options=[1]), 400, "stream_options"),
])
def test_bad_requests_get_openai_style_errors(base_url, body, status, param):
    assert error_of(httpx.post(f"{base_url}/chat/completions", json=body), status)["param"] == param


def test_malformed_and_oversized_bodies(base_url):
    url = f"{base_url}/chat/completions"
    assert error_of(httpx.post(url, content=b"[" * 19_000), 400)["message"]  # was a RecursionError
    curl = httpx.post(url, content=json.dumps(HI), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert curl.status_code == 200  # `curl -d` sends JSON with a form type
    assert error_of(httpx.post(url, content=b'{"model": "test-model", "messages": [{"role": "user", "content": '
                                            b'"\\ud800"}]}'), 400)["message"]
    assert error_of(httpx.post(url, content=b"{not json"), 400)["code"] == "invalid_json"
    assert error_of(httpx.post(url, content=b"[1, 2]"), 400)["code"] == "invalid_json"
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 30_000}]}
    assert error_of(httpx.post(url, json=big), 413)["code"] == "body_too_large"

    def chunked():  # no Content-Length: the limit is enforced while reading
        for _ in range(30):
            yield b" " * 1000
    assert error_of(httpx.post(url, content=chunked()), 413)["code"] == "body_too_large"
    assert error_of(httpx.get(f"{base_url}/nowhere"), 404)["code"] == "not_found"


def test_openai_client_raises_on_errors(base_url):
    with pytest.raises(openai.NotFoundError):
        client(base_url).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="at most 100"):
        client(base_url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=1000)


def test_model_exception_is_a_500_and_the_server_keeps_serving(base_url):
    reply = httpx.post(f"{base_url}/chat/completions",
                       json={"model": MODEL, "messages": [{"role": "user", "content": "boom"}]})
    error = error_of(reply, 500)
    assert error["type"] == "server_error" and "exploded" in error["message"]
    with pytest.raises(openai.InternalServerError):
        client(base_url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "boom"}])
    chunks = list(client(base_url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streaming_model_exception_is_reported_in_band(base_url):
    with httpx.stream("POST", f"{base_url}/chat/completions",
                      json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "boom"}]}) as r:
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "exploded" in json.loads(events[-2])["error"]["message"]


def test_api_key(rule_model):
    with running_server(create_app(rule_model, MODEL, api_key="s3cret")) as url:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        assert error_of(httpx.post(f"{url}/chat/completions", json=body), 401)["code"] == "invalid_api_key"
        error_of(httpx.post(f"{url}/chat/completions", json=body, headers={"Authorization": "Bearer nope"}), 401)
        error_of(httpx.post(f"{url}/chat/completions", json=body, headers={"Authorization": "s3cret"}), 401)
        error_of(httpx.get(f"{url}/models"), 401)
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").chat.completions.create(**body)
        assert client(url, "s3cret").chat.completions.create(**body).choices[0].message.content == "echo: hi"
        assert [m.id for m in client(url, "s3cret").models.list()] == [MODEL]
        assert httpx.get(url.removesuffix("/v1") + "/health").json()["status"] == "ok"


def test_concurrent_clients_are_queued(base_url, rule_model):
    def ask(i: int) -> str:
        reply = client(base_url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": str(i)}])
        return reply.choices[0].message.content

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(12)))
    assert answers == [f"echo: {i}" for i in range(12)]
    assert rule_model.concurrency["max"] == 1


def test_serving_a_natively_streaming_model(base_url):
    # ChatOpenAI streams AIMessageChunks with tool-call pieces: serve it, in front of the rule model's server.
    front = ChatOpenAI(base_url=base_url, model=MODEL, api_key="unused", max_retries=0)
    with running_server(create_app(front, "front")) as url:
        api = client(url)
        chunks = list(api.chat.completions.create(model="front", messages=[{"role": "user", "content": "2+3"}],
                                                  tools=[ADD_TOOL], stream=True, max_tokens=20))
        pieces = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
        assert [p.id for p in pieces if p.id] == ["call_1"]
        assert json.loads("".join(p.function.arguments or "" for p in pieces)) == {"a": 2, "b": 3}
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        text = "".join(c.choices[0].delta.content or "" for c in api.chat.completions.create(
            model="front", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices)
        assert text == "echo: hi"


def test_open_bind_needs_an_api_key(rule_model):
    from mentor_agents.integrations.openai.server import is_loopback, serve

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    with pytest.raises(PermissionError, match="needs an API key"):
        serve(create_app(rule_model, "rule"), host="0.0.0.0", port=0)
    assert create_app(rule_model, "rule", api_key="k").state.requires_api_key
