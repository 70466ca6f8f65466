"""The recording proxy between a real LangGraph agent and an OpenAI-compatible teacher server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import openai
import pytest
from fastapi import Request
from fastapi.responses import JSONResponse
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

from servers import free_port, mentor_process
from text_calls import TextToolCallingModel

from mentor_agents.demo.calculator import (
    ScriptedCalculatorTeacher,
    SYSTEM_PROMPT,
    build_agent,
    make_tasks,
)
from mentor_agents.integrations.langgraph.recording import record
from mentor_agents.integrations.openai.proxy import create_proxy_app
from mentor_agents.integrations.openai.server import create_app, running_server
from mentor_agents.references import build_references
from mentor_agents.traces import ModelStep, ToolStep, TraceStore

KEY = "sk-test-secret-0123456789"
MODEL = "scripted-teacher"


@pytest.fixture
def upstream():
    app = create_app(ScriptedCalculatorTeacher(), MODEL, api_key=KEY)

    @app.middleware("http")
    async def fail_on_request(request: Request, call_next):
        body = await request.body()
        if b"7 times 8" in body:
            return JSONResponse({"error": {"message": "teacher overloaded", "type": "server_error", "param": None,
                                           "code": None}}, status_code=500)
        if b"echo my key" in body:  # a careless server that repeats the caller's credentials in an error
            return JSONResponse({"error": {"message": f"failed for {request.headers['authorization']}"}}, 503)
        if b"echo my token" in body:  # ... or only the token, without its scheme
            token = request.headers["authorization"].split()[-1]
            return JSONResponse({"error": {"message": f"bad token {token}"}}, 503)
        return await call_next(request)

    with running_server(app) as url:
        yield url


def agent_through(proxy_url: str, key: str = KEY, model: str = MODEL):
    return build_agent(ChatOpenAI(base_url=proxy_url, model=model, api_key=key, max_retries=0))


def assert_no_secret(path) -> None:
    text = path.read_text()
    assert KEY not in text and "wrong-key" not in text and "Bearer s" not in text and "Bearer w" not in text


def test_proxy_records_complete_conversations(tmp_path, upstream):
    tasks = make_tasks(5, seed=2)
    store, turns = TraceStore(tmp_path / "proxy.jsonl"), TraceStore(tmp_path / "turns.jsonl")
    with running_server(create_proxy_app(upstream, store, partial_store=turns)) as proxy:
        direct = record(agent_through(proxy), tasks, tmp_path / "direct.jsonl", concurrency=2, timeout_s=30,
                        retries=0, progress=False)
    assert all(t.verdict == "correct" for t in direct)
    final, partial_turns = store.read(), turns.read()
    assert len(final) == 5 and not any(t.metadata["partial"] for t in final)
    assert len(final) + len(partial_turns) == sum(isinstance(s, ModelStep) for t in direct for s in t.steps)
    by_input = {t.task_input: t for t in final}
    for task, seen in zip(tasks, direct):
        trace = by_input[task.input]
        assert trace.task_id.startswith("proxy-") and trace.sample == 0 and trace.error is None
        assert trace.system_prompt == SYSTEM_PROMPT and trace.tools == seen.tools
        assert trace.teacher_model == MODEL and trace.teacher_endpoint == upstream
        # The proxy's reconstruction agrees with what the recorder saw inside the graph.
        assert [(c.id, c.name, c.args) for c in trace.tool_calls] == [(c.id, c.name, c.args) for c in seen.tool_calls]
        assert [(s.call_id, s.name, s.args, s.result) for s in trace.tool_steps] == \
               [(s.call_id, s.name, s.args, s.result) for s in seen.tool_steps]
        assert [s.kind for s in trace.steps] == [s.kind for s in seen.steps]
        assert trace.final_answer == seen.final_answer and task.verdict(trace.final_answer) == "correct"
        assert trace.steps[-1].input_messages == [m for s in seen.steps[-1:] for m in s.input_messages]
        assert trace.usage.input_tokens > 0 and trace.steps[-1].latency_s > 0
        assert trace.duration_s >= sum(s.latency_s for s in trace.steps if isinstance(s, ModelStep))
        assert trace.metadata["turn"] == sum(isinstance(s, ModelStep) for s in trace.steps)
        partial = [t for t in partial_turns if t.task_id == trace.task_id]
        assert partial and all(t.metadata["partial"] and t.final_answer is None and t.sample == 0 for t in partial)
        assert all(t.steps[-1].tool_calls for t in partial)
        assert trace.steps[:len(partial[-1].steps)] == partial[-1].steps
    references = build_references(final, keep=("unknown",))
    assert sorted(r.task_input for r in references) == sorted(t.input for t in tasks)
    assert all(r.teacher_answer for r in references)
    assert_no_secret(store.path)
    assert_no_secret(turns.path)


def test_repeated_runs_get_new_samples_and_resume_after_restart(tmp_path, upstream):
    task = make_tasks(1, seed=4)[0]
    store = TraceStore(tmp_path / "proxy.jsonl")
    for _ in range(2):  # a restarted proxy continues the sample numbers already in the store
        with running_server(create_proxy_app(upstream, store)) as proxy:
            agent = agent_through(proxy)
            agent.invoke({"messages": [HumanMessage(task.input)]})
            agent.invoke({"messages": [HumanMessage(task.input)]})
    final = store.read()
    assert [t.sample for t in final] == [0, 1, 2, 3] and len({t.task_id for t in final}) == 1


def test_requests_without_tools_are_forwarded_but_not_recorded(tmp_path, upstream):
    store = TraceStore(tmp_path / "proxy.jsonl")
    with running_server(create_proxy_app(upstream, store, upstream_api_key=KEY)) as proxy:
        client = openai.OpenAI(base_url=proxy, api_key="client-key-not-forwarded", max_retries=0)
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is 1 plus 2?"}])
        # The upstream model's own reply to this tool-less request, passed back unchanged.
        direct = ScriptedCalculatorTeacher().invoke([("user", "What is 1 plus 2?")]).content
        assert reply.choices[0].message.content == direct == "The tools I need are not available. Answer: unknown"
        assert [m.id for m in client.models.list()] == [MODEL]
    assert not store.path.exists() or store.read() == []


def test_upstream_errors_are_passed_back_and_recorded_as_failed(tmp_path, upstream):
    store = TraceStore(tmp_path / "proxy.jsonl")
    with running_server(create_proxy_app(upstream, store)) as proxy:
        with pytest.raises(openai.InternalServerError, match="overloaded"):
            agent_through(proxy).invoke({"messages": [HumanMessage("What is 7 times 8?")]})
        with pytest.raises(openai.AuthenticationError):  # the client's key is forwarded, and it is wrong
            agent_through(proxy, key="wrong-key").invoke({"messages": [HumanMessage("What is 2 plus 2?")]})
        reply = httpx.post(f"{proxy}/chat/completions", json={"model": MODEL, "stream": True, "messages": []})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "stream"
        reply = httpx.post(f"{proxy}/chat/completions", content=b"{oops")
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_json"
        with pytest.raises(openai.APIStatusError, match=KEY):  # the client gets the upstream answer unchanged
            agent_through(proxy).invoke({"messages": [HumanMessage("echo my key")]})
    overloaded, unauthorized, echoed = store.read()
    assert echoed.error.startswith("upstream HTTP 503") and "<redacted>" in echoed.error
    assert overloaded.error.startswith("upstream HTTP 500") and "overloaded" in overloaded.error
    assert unauthorized.error == "upstream HTTP 401: authentication failed"
    assert overloaded.task_input == "What is 7 times 8?" and overloaded.steps == [] and overloaded.metadata["partial"]
    assert build_references(store.read(), keep=("unknown",)) == []
    assert_no_secret(store.path)


def test_unreachable_upstream_is_a_502_and_a_failed_trace(tmp_path):
    store = TraceStore(tmp_path / "proxy.jsonl")
    with running_server(create_app(ScriptedCalculatorTeacher(), MODEL)) as gone:
        pass  # the server has stopped: its port refuses connections
    with running_server(create_proxy_app(gone, store, timeout_s=5)) as proxy:
        with pytest.raises(openai.APIStatusError) as raised:
            agent_through(proxy).invoke({"messages": [HumanMessage("What is 2 plus 2?")]})
        assert raised.value.status_code == 502
    (trace,) = store.read()
    assert "ConnectError" in trace.error and trace.teacher_endpoint == gone


def run_text_teacher_through_proxy(tmp_path, lenient: bool, question: str):
    """The agent's messages, and every trace the proxy wrote (intermediate turns first)."""
    store, turns = TraceStore(tmp_path / "proxy.jsonl"), TraceStore(tmp_path / "turns.jsonl")
    with running_server(create_app(TextToolCallingModel(), "text-teacher")) as upstream:
        with running_server(create_proxy_app(upstream, store, lenient=lenient, partial_store=turns)) as proxy:
            messages = agent_through(proxy, model="text-teacher").invoke({"messages": [HumanMessage(question)]})
    return messages["messages"], turns.read() + store.read()


def test_strict_proxy_records_no_text_calls(tmp_path):
    messages, traces = run_text_teacher_through_proxy(tmp_path, False, "What is 6 times 7?")
    (trace,) = traces
    assert trace.tool_calls == [] and not trace.metadata["partial"] and "multiply" in trace.final_answer
    assert not any(isinstance(m, ToolMessage) for m in messages)


@pytest.mark.parametrize("question, tool", [("What is 6 times 7?", "multiply"), ("What is 20 plus 22?", "add")])
def test_lenient_proxy_turns_text_calls_into_tool_calls(tmp_path, question, tool):
    messages, traces = run_text_teacher_through_proxy(tmp_path, True, question)
    (result,) = [m for m in messages if isinstance(m, ToolMessage)]  # the graph ran the tool
    assert result.text == "42" and messages[-1].text == "Answer: 42"
    partial, final = traces
    assert partial.metadata["partial"] and not final.metadata["partial"] and final.final_answer == "Answer: 42"
    assert partial.final_answer is None and partial.steps == final.steps[:1]
    for trace in (partial, final):
        (call,) = trace.tool_calls
        assert call.name == tool and call.parsed_from_text and call.id == result.tool_call_id
    (step,) = final.tool_steps
    assert isinstance(step, ToolStep) and step.name == tool and step.result == "42"


def test_lenient_proxy_rejects_tools_that_were_not_offered(tmp_path):
    messages, (trace,) = run_text_teacher_through_proxy(tmp_path, True, "Teleport to the moon")
    assert trace.tool_calls == [] and json.loads(trace.final_answer)["name"] == "teleport"
    assert not any(isinstance(m, ToolMessage) for m in messages)


def test_mentor_proxy_command(tmp_path, upstream):
    port, store = free_port(), tmp_path / "cli.jsonl"
    env = {**os.environ, "TEACHER_KEY": KEY, "OMP_NUM_THREADS": "1"}
    args = ["proxy", "--upstream", upstream, "--store", str(store), "--port", str(port), "--upstream-api-key-env",
            "TEACHER_KEY"]
    with mentor_process(args, port, env):
        task = make_tasks(1, seed=5)[0]
        agent_through(f"http://127.0.0.1:{port}/v1", key="client-key").invoke({"messages": [HumanMessage(task.input)]})
    (trace,) = TraceStore(store).read()
    assert trace.task_input == task.input and task.verdict(trace.final_answer) == "correct"
    assert_no_secret(store)

    missing = subprocess.run([sys.executable, "-m", "mentor_agents.app.cli", *args[:7], "--upstream-api-key-env",
                              "NOT_SET_ANYWHERE"], capture_output=True, text=True)
    assert missing.returncode != 0 and "NOT_SET_ANYWHERE" in missing.stderr


@pytest.mark.parametrize("authorization", [f"bearer {KEY}", f"BEARER {KEY}", f"Token {KEY}", KEY])
def test_a_credential_in_any_case_and_scheme_is_redacted_everywhere(tmp_path, upstream, authorization):
    """The proxy redacted only a "Bearer " token: a lowercase scheme plus an upstream that echoes the token put the
    key into the trace (issue 15, case 4). Now every credential it saw is redacted from every stored field."""
    store = TraceStore(tmp_path / "proxy.jsonl")
    request = {"model": MODEL, "tools": [ADD_TOOL], "messages": [{"role": "user", "content": "echo my token"}]}
    with running_server(create_proxy_app(upstream, store)) as proxy:
        reply = httpx.post(f"{proxy}/chat/completions", json=request, headers={"Authorization": authorization})
        assert reply.status_code == 503 and KEY in reply.text  # the client gets the upstream's answer unchanged
        request["messages"][0]["content"] = f"echo my key; and my key is {KEY}"
        assert httpx.post(f"{proxy}/chat/completions", json=request,
                          headers={"Authorization": authorization}).status_code == 503
    token, echoed = store.read()
    assert token.error == "upstream HTTP 503: " + json.dumps({"error": {"message": "bad token <redacted>"}},
                                                            separators=(",", ":"))
    assert "<redacted>" in echoed.task_input and "<redacted>" in echoed.error
    assert KEY not in store.path.read_text()


ADD_TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}


def test_upstream_user_and_password_are_never_shown_or_stored(tmp_path):
    """``--upstream http://user:pass@host/v1`` put the credentials into each trace's teacher_endpoint and error, the
    502 messages, and the startup line (issue 15, case 5)."""
    store = TraceStore(tmp_path / "proxy.jsonl")
    with running_server(create_app(ScriptedCalculatorTeacher(), MODEL)) as url:
        with running_server(create_proxy_app(url.replace("http://", "http://alice:s3cr3t-pw@"), store)) as proxy:
            agent_through(proxy, key="unused").invoke({"messages": [HumanMessage("What is 2 plus 2?")]})
    with running_server(create_proxy_app(url.replace("http://", "http://alice:s3cr3t-pw@"), store)) as proxy:
        reply = httpx.post(f"{proxy}/chat/completions", json={"model": MODEL, "tools": [ADD_TOOL], "messages": [
            {"role": "user", "content": "What is 2 plus 2?"}]})  # the upstream has stopped
        assert reply.status_code == 502 and "s3cr3t" not in reply.text and "alice" not in reply.text
    complete, failed = store.read()
    assert complete.teacher_endpoint == url and failed.teacher_endpoint == url and "ConnectError" in failed.error
    assert "s3cr3t" not in store.path.read_text() and "alice" not in store.path.read_text()

    port = free_port()
    args = ["proxy", "--upstream", "http://alice:s3cr3t-pw@127.0.0.1:9/v1", "--store", str(store.path), "--port",
            str(port)]
    with mentor_process(args, port, {**os.environ, "OMP_NUM_THREADS": "1"}) as process:
        pass
    banner = process.stdout.read()
    assert "127.0.0.1:9/v1" in banner and "s3cr3t" not in banner and "alice" not in banner


ODD_ANSWERS = {
    "usage.prompt_tokens is a string": {"usage": {"prompt_tokens": "many", "completion_tokens": 1}},
    "content is 42": {"choices": [{"index": 0, "message": {"role": "assistant", "content": 42}}]},
    "choices is [5]": {"choices": [5]},
    "a choice without message": {"choices": [{"index": 0, "finish_reason": "stop"}]},
    "a tool call without function": {"choices": [{"index": 0, "message": {
        "role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}}]},
    "numeric tool-call arguments": {"choices": [{"index": 0, "message": {"role": "assistant", "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": 5}}]}}]},
}


@pytest.fixture
def odd_upstream():
    """An upstream that answers 200 with the odd JSON named by the request's user message."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def answer(request: Request):
        case = (await request.json())["messages"][-1]["content"]
        base = {"id": "x", "object": "chat.completion", "model": MODEL, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Answer: 4"}, "finish_reason": "stop"}]}
        return {**base, **ODD_ANSWERS[case]}

    with running_server(app) as url:
        yield url


def test_the_client_gets_the_upstream_answer_when_recording_fails(tmp_path, odd_upstream):
    """Each odd upstream answer made the proxy answer 500 (issue 15, case 6): the client gets the answer, and the
    recording failure is logged and counted."""
    store = TraceStore(tmp_path / "proxy.jsonl")
    app = create_proxy_app(odd_upstream, store, lenient=True)
    with running_server(app) as proxy:
        for case, odd in ODD_ANSWERS.items():
            reply = httpx.post(f"{proxy}/chat/completions", json={
                "model": MODEL, "tools": [ADD_TOOL], "messages": [{"role": "user", "content": case}]})
            assert reply.status_code == 200, (case, reply.text)
            assert all(reply.json()[k] == v for k, v in odd.items()), case
        for tools in ("abc", [1], [{"function": {}}], [{"function": "add"}]):
            reply = httpx.post(f"{proxy}/chat/completions", json={
                "model": MODEL, "tools": tools, "messages": [{"role": "user", "content": "content is 42"}]})
            assert reply.status_code == 400 and reply.json()["error"]["param"] == "tools", (tools, reply.text)
        store.path.unlink()
        store.path.mkdir()  # the store stops being writable while the proxy runs
        reply = httpx.post(f"{proxy}/chat/completions", json={
            "model": MODEL, "tools": [ADD_TOOL], "messages": [{"role": "user", "content": "usage.prompt_tokens is a string"}]})
        assert reply.status_code == 200
    # Recorded: the string usage (as 0 tokens), and the answers without a message (as failed traces). Not recorded:
    # content 42, the two broken tool calls, and the turn after the store became a directory.
    assert app.state.recording_failures == 4


def test_a_store_that_cannot_be_written_is_refused_at_startup(tmp_path):
    (tmp_path / "a-file").write_text("")
    for store in (tmp_path / "a-file" / "traces.jsonl", tmp_path):
        with pytest.raises(ValueError, match="cannot append"):
            create_proxy_app("http://127.0.0.1:9/v1", store)
    done = subprocess.run([sys.executable, "-m", "mentor_agents.app.cli", "proxy", "--upstream", "http://127.0.0.1:9/v1",
                           "--store", str(tmp_path / "a-file" / "t.jsonl"), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "cannot append" in done.stderr and "Traceback" not in done.stderr


def test_binding_beyond_loopback_needs_a_client_key(tmp_path, upstream):
    """Without an injected upstream key the proxy bound any address with no client authentication: an open relay
    whose callers add training traces (issue 15, case 12). The server's rule now holds: no key, loopback only."""
    assert not create_proxy_app(upstream, tmp_path / "t.jsonl").state.requires_api_key  # so serve() refuses it
    refused = subprocess.run([sys.executable, "-m", "mentor_agents.app.cli", "proxy", "--upstream", upstream, "--store",
                              str(tmp_path / "t.jsonl"), "--host", "0.0.0.0", "--port", str(free_port())],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "--api-key-env" in refused.stderr and "Traceback" not in refused.stderr

    store = TraceStore(tmp_path / "keyed.jsonl")
    app = create_proxy_app(upstream, store, api_key="proxy-key", upstream_api_key=KEY)
    assert app.state.requires_api_key
    with running_server(app) as proxy:
        assert httpx.get(f"{proxy}/models").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            agent_through(proxy, key="wrong").invoke({"messages": [HumanMessage("What is 2 plus 2?")]})
        agent_through(proxy, key="proxy-key").invoke({"messages": [HumanMessage("What is 2 plus 2?")]})
    (trace,) = store.read()
    assert trace.final_answer and "proxy-key" not in store.path.read_text()
    assert_no_secret(store.path)
