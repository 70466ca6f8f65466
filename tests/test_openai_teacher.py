"""A teacher behind an OpenAI-compatible endpoint, recorded through a real LangGraph agent over HTTP."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fastapi import Request
from fastapi.responses import JSONResponse
from langchain_core.messages import AIMessage, HumanMessage
from langchain_openai import ChatOpenAI

from text_calls import TextToolCallingModel

from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent, make_tasks
from mentor_agents.integrations.langgraph.recording import record
from mentor_agents.integrations.openai.server import create_app, running_server
from mentor_agents.integrations.openai.teacher import LenientChatOpenAI, OpenAITeacher, promote_text_calls
from mentor_agents.tasks import NumericMatch, Task
from mentor_agents.traces import TraceStore

KEY = "sk-test-secret-0123456789"


def calculator_task(task_id: str, question: str, answer: float) -> Task:
    return Task(id=task_id, input=question, ground_truth=answer, verifier=NumericMatch())


def assert_no_secret(path) -> None:
    text = path.read_text()
    assert KEY not in text and "Bearer" not in text and "authorization" not in text.lower()


def test_openai_teacher_defaults_from_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("MENTOR_TEACHER_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    teacher = OpenAITeacher()
    assert (teacher.base_url, teacher.model, teacher.api_key) == ("http://127.0.0.1:9/v1", "env-model", KEY)
    assert KEY not in repr(teacher)
    model = teacher.chat_model()
    assert type(model) is ChatOpenAI and model.max_retries == 0 and model.model_name == "env-model"
    assert isinstance(OpenAITeacher(model="m", api_key="x", lenient=True).chat_model(), LenientChatOpenAI)
    monkeypatch.delenv("MENTOR_TEACHER_MODEL")
    with pytest.raises(ValueError, match="MENTOR_TEACHER_MODEL"):
        OpenAITeacher()
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAITeacher(model="m")


def test_recording_a_teacher_over_http(tmp_path):
    tasks = make_tasks(5, seed=1)
    store = TraceStore(tmp_path / "traces.jsonl")
    with running_server(create_app(ScriptedCalculatorTeacher(), "scripted-teacher", api_key=KEY)) as url:
        teacher = OpenAITeacher(base_url=url, model="scripted-teacher", api_key=KEY, timeout_s=30)
        traces = record(build_agent(teacher.chat_model()), tasks, store, concurrency=2, timeout_s=30, retries=0,
                        progress=False)
    assert [t.task_id for t in store.read()] and len(store.read()) == 5
    for task, trace in zip(tasks, traces):
        assert trace.error is None and trace.verdict == "correct", (task.input, trace.final_answer)
        assert trace.teacher_model == "scripted-teacher" and trace.teacher_endpoint == url
        assert {c.name for c in trace.tool_calls} == set(task.metadata["tools"])
        assert all(c.id and isinstance(c.args, dict) and not c.parsed_from_text for c in trace.tool_calls)
        assert [s.call_id for s in trace.tool_steps] == [c.id for c in trace.tool_calls]
        assert all(not s.error and s.result for s in trace.tool_steps)
        assert trace.final_answer.startswith("Answer:")
        assert trace.tools and trace.system_prompt and trace.usage.input_tokens > 0
    assert_no_secret(store.path)


def run_text_teacher(tmp_path, lenient: bool, tasks: list[Task]):
    store = TraceStore(tmp_path / f"lenient-{lenient}.jsonl")
    with running_server(create_app(TextToolCallingModel(), "text-teacher")) as url:
        teacher = OpenAITeacher(base_url=url, model="text-teacher", api_key=KEY, lenient=lenient)
        return record(build_agent(teacher.chat_model()), tasks, store, concurrency=1, timeout_s=30, retries=0,
                      progress=False)


TEXT_TASKS = [calculator_task("times", "What is 6 times 7?", 42), calculator_task("plus", "What is 20 plus 22?", 42)]


def test_strict_teacher_records_no_text_calls(tmp_path):
    for trace in run_text_teacher(tmp_path, False, TEXT_TASKS):
        assert trace.error is None and trace.tool_calls == [] and trace.tool_steps == []
        assert '"arguments"' in trace.final_answer


def test_lenient_teacher_turns_text_calls_into_tool_calls(tmp_path):
    for trace, name in zip(run_text_teacher(tmp_path, True, TEXT_TASKS), ["multiply", "add"]):
        assert trace.error is None and trace.verdict == "correct" and trace.final_answer == "Answer: 42"
        (call,) = trace.tool_calls
        assert call.name == name and call.parsed_from_text and call.id.startswith("call_")
        (step,) = trace.tool_steps  # the graph really ran the tool
        assert step.call_id == call.id and step.result == "42" and not step.error
        first = trace.steps[0]
        assert first.output["content"] in ("", "I will use a tool.")


def test_lenient_teacher_rejects_tools_that_were_not_offered(tmp_path):
    (trace,) = run_text_teacher(tmp_path, True, [Task(id="t", input="Teleport to the moon")])
    assert trace.tool_calls == [] and trace.tool_steps == []
    assert trace.final_answer == '{"name": "teleport", "arguments": {"to": "the moon"}}'


def test_promote_text_calls_unit():
    message = AIMessage('Calling {"name": "add", "arguments": {"a": 1, "b": 2}} now')
    promoted = promote_text_calls(message, {"add"})
    (call,) = promoted.tool_calls
    assert call["args"] == {"a": 1, "b": 2} and promoted.text == "Calling  now"
    assert promoted.additional_kwargs["mentor_parsed_from_text"] == [call["id"]]
    assert promote_text_calls(message, {"multiply"}) is message
    native = AIMessage("", tool_calls=[{"name": "add", "args": {}, "id": "c1", "type": "tool_call"}])
    assert promote_text_calls(native, {"add"}) is native


def test_lenient_invoke_and_ainvoke(tmp_path):
    with running_server(create_app(TextToolCallingModel(), "text-teacher")) as url:
        model = OpenAITeacher(base_url=url, model="text-teacher", api_key=KEY, lenient=True).chat_model()
        from mentor_agents.demo.calculator import TOOLS
        bound = model.bind_tools(TOOLS)
        for message in (bound.invoke([HumanMessage("What is 2 times 3?")]),
                        asyncio.run(bound.ainvoke([HumanMessage("What is 2 times 3?")])),
                        list(bound.stream([HumanMessage("What is 2 times 3?")]))[-1]):
            assert [(c["name"], c["args"]) for c in message.tool_calls] == [("multiply", {"a": 2, "b": 3})]


class FlakyTeacherServer:
    """The scripted teacher behind a server that fails on purpose: 500 for the first ``fail_first`` requests,
    always 500 for questions containing ``broken``, and no answer (until released) for ones containing ``hang``."""

    def __init__(self, fail_first: int = 0, broken: str = "\x00", hang: str = "\x00"):
        self.app = create_app(ScriptedCalculatorTeacher(), "scripted-teacher")
        self.requests = 0
        self.release = threading.Event()

        @self.app.middleware("http")
        async def fail(request: Request, call_next):
            if request.url.path.endswith("/chat/completions"):
                self.requests += 1
                body = (await request.body()).decode()
                if self.requests <= fail_first or broken in body:
                    return JSONResponse({"error": {"message": "teacher overloaded", "type": "server_error",
                                                   "param": None, "code": None}}, status_code=500)
                while hang in body and not self.release.is_set():
                    await asyncio.sleep(0.02)
            return await call_next(request)


def test_teacher_errors_are_retried_by_the_recorder(tmp_path):
    server = FlakyTeacherServer(fail_first=2)
    tasks = [calculator_task("a", "What is 2 plus 3?", 5), calculator_task("b", "What is 4 times 5?", 20)]
    with running_server(server.app) as url:
        teacher = OpenAITeacher(base_url=url, model="scripted-teacher", api_key=KEY)
        traces = record(build_agent(teacher.chat_model()), tasks, tmp_path / "t.jsonl", concurrency=1,
                        timeout_s=30, retries=3, backoff_s=0.01, progress=False)
    assert [t.verdict for t in traces] == ["correct", "correct"]
    assert traces[0].metadata["attempts"] == 3 and traces[1].metadata["attempts"] == 1


def test_broken_and_hanging_teacher_give_failed_traces(tmp_path):
    server = FlakyTeacherServer(broken="7 times 8", hang="9 times 9")
    tasks = [calculator_task("ok", "What is 2 plus 3?", 5), calculator_task("broken", "What is 7 times 8?", 56),
             calculator_task("hang", "What is 9 times 9?", 81), calculator_task("ok2", "What is 30 minus 4?", 26)]
    store = TraceStore(tmp_path / "t.jsonl")
    with running_server(server.app) as url:
        teacher = OpenAITeacher(base_url=url, model="scripted-teacher", api_key=KEY, timeout_s=30)
        try:
            traces = record(build_agent(teacher.chat_model()), tasks, store, concurrency=2, timeout_s=1.0,
                            retries=1, backoff_s=0.01, progress=False)
        finally:
            server.release.set()
    by_id = {t.task_id: t for t in traces}
    assert by_id["ok"].verdict == "correct" and by_id["ok2"].verdict == "correct"
    assert "500" in by_id["broken"].error or "overloaded" in by_id["broken"].error
    assert by_id["broken"].verdict == "unknown" and by_id["broken"].metadata["attempts"] == 2
    assert "Timeout" in by_id["hang"].error and by_id["hang"].verdict == "unknown"
    assert len(store.read()) == 4
    assert_no_secret(store.path)
