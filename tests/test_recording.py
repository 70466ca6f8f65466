"""Recording teacher traces from real LangGraph graphs running real tools: contents, resume, kills, failures."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from pydantic import PrivateAttr

from mentor_agents.demo.calculator import (
    SYSTEM_PROMPT,
    TOOLS,
    ScriptedCalculatorTeacher,
    build_agent,
    make_tasks,
)
from mentor_agents.integrations.langgraph import arecord, record, to_openai_messages
from mentor_agents.references import build_references
from mentor_agents.tasks import NumericMatch, Task
from mentor_agents.traces import TraceStore

QUESTION = "What is (4 plus 5) times (9 minus 2)?"


def lines(path):
    return path.read_text().splitlines()


# ------------------------------------------------------------------------------------------------ teachers for tests


class FlakyTeacher(ScriptedCalculatorTeacher):
    """Fails its first ``failures`` calls with a transient connection error, then answers like the scripted teacher."""

    failures: int = 2
    _calls: int = PrivateAttr(default=0)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self._calls += 1
        if self._calls <= self.failures:
            raise ConnectionError(f"transient failure {self._calls}")
        return super()._generate(messages, stop, run_manager, **kwargs)


class DownOnOneQuestionTeacher(ScriptedCalculatorTeacher):
    """Always raises on questions that contain ``poison``; answers the others."""

    poison: str

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        if any(self.poison in str(m.content) for m in messages):
            raise RuntimeError("teacher is down")
        return super()._generate(messages, stop, run_manager, **kwargs)


class HangsOnOneQuestionTeacher(ScriptedCalculatorTeacher):
    """Never answers questions that contain ``poison``; answers the others."""

    poison: str

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        if any(self.poison in str(m.content) for m in messages):
            await asyncio.sleep(3600)
        return self._generate(messages, stop, run_manager, **kwargs)


class GatheringTeacher(ScriptedCalculatorTeacher):
    """A synchronous model that holds each run's first call until ``_barrier``'s parties all made theirs: they only
    get through when that many calls run at once."""

    _barrier: threading.Barrier = PrivateAttr()

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        if not any(isinstance(m, ToolMessage) for m in messages):
            self._barrier.wait()
        return super()._generate(messages, stop, run_manager, **kwargs)


class TextCallTeacher(ScriptedCalculatorTeacher):
    """Marks its tool calls the way the lenient OpenAI teacher marks calls it recovered from message text."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        result = super()._generate(messages, stop, run_manager, **kwargs)
        message = result.generations[0].message
        message.additional_kwargs["mentor_parsed_from_text"] = [call["id"] for call in message.tool_calls]
        return result


class UnknownToolTeacher(ScriptedCalculatorTeacher):
    """Calls a tool the agent does not have, then gives up."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        if any(isinstance(m, ToolMessage) for m in messages):
            message = AIMessage("Answer: unknown")
        else:
            message = AIMessage("", tool_calls=[{"name": "percent", "args": {"x": 5}, "id": "call_p", "type": "tool_call"}])
        return ChatResult(generations=[ChatGeneration(message=message)])


# ----------------------------------------------------------------------------------------------------------- tests


def test_to_openai_messages():
    call = {"name": "add", "args": {"a": 1, "b": 2}, "id": "call_1", "type": "tool_call"}
    messages = to_openai_messages([
        SystemMessage("sys"),
        ("user", "hi"),
        AIMessage("", tool_calls=[call]),
        ToolMessage("3", tool_call_id="call_1", name="add"),
        AIMessage([{"type": "text", "text": "Answer: "}, "3"]),
    ])
    assert messages == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
        {"role": "tool", "content": "3", "tool_call_id": "call_1", "name": "add"},
        {"role": "assistant", "content": "Answer: 3"},
    ]


@pytest.mark.parametrize("builder", ["create_agent", "react", "stategraph"])
def test_record_through_each_builder_captures_every_field(tmp_path, builder):
    task = Task(id="t-1", input=QUESTION, ground_truth=63, verifier=NumericMatch())
    before = time.time()
    (trace,) = record(build_agent(ScriptedCalculatorTeacher(), builder), [task], tmp_path / "t.jsonl", progress=False)
    assert TraceStore(tmp_path / "t.jsonl").read() == [trace]

    assert (trace.task_id, trace.sample, trace.task_input) == ("t-1", 0, QUESTION)
    assert trace.ground_truth == 63 and trace.verifier == NumericMatch()
    assert trace.system_prompt == SYSTEM_PROMPT
    assert trace.tools == [convert_to_openai_tool(t) for t in TOOLS] and len(trace.tools) == 12
    assert trace.teacher_model == "scripted-calculator-teacher" and trace.teacher_endpoint is None
    assert trace.error is None and trace.metadata == {"attempts": 1}

    assert [step.kind for step in trace.steps] == ["model", "tool", "tool", "model", "tool", "model"]
    m1, t_add, t_sub, m2, t_mul, m3 = trace.steps
    assert m1.input_messages == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": QUESTION}]
    assert [(c.name, c.args, c.parsed_from_text) for c in m1.tool_calls] == [
        ("add", {"a": 4, "b": 5}, False), ("subtract", {"a": 9, "b": 2}, False)]
    assert m1.output["role"] == "assistant"
    assert [c["function"] for c in m1.output["tool_calls"]] == [
        {"name": "add", "arguments": {"a": 4, "b": 5}}, {"name": "subtract", "arguments": {"a": 9, "b": 2}}]
    assert [c["id"] for c in m1.output["tool_calls"]] == [c.id for c in m1.tool_calls]
    for step, call, result in [(t_add, m1.tool_calls[0], "9"), (t_sub, m1.tool_calls[1], "7"),
                               (t_mul, m2.tool_calls[0], "63")]:
        assert (step.call_id, step.name, step.args, step.result, step.error) == (call.id, call.name, call.args,
                                                                                 result, False)
        assert step.latency_s >= 0
    assert [(c.name, c.args) for c in m2.tool_calls] == [("multiply", {"a": 9, "b": 7})]
    assert m2.input_messages[:2] == m1.input_messages
    assert m2.input_messages[2] == m1.output
    assert m2.input_messages[3:] == [
        {"role": "tool", "content": "9", "tool_call_id": m1.tool_calls[0].id, "name": "add"},
        {"role": "tool", "content": "7", "tool_call_id": m1.tool_calls[1].id, "name": "subtract"}]
    assert m3.output == {"role": "assistant", "content": "Answer: 63"} and m3.tool_calls == []
    assert len(m3.input_messages) == 7

    assert trace.final_answer == "Answer: 63" and trace.verdict == "correct"
    models = [m1, m2, m3]
    assert all(m.usage.input_tokens > 0 and m.usage.output_tokens > 0 for m in models)
    assert trace.usage.input_tokens == sum(m.usage.input_tokens for m in models)
    assert trace.usage.output_tokens == sum(m.usage.output_tokens for m in models)
    assert before <= trace.started_at <= time.time()
    assert all(m.latency_s > 0 for m in models)
    assert trace.duration_s >= sum(step.latency_s for step in trace.steps)


def test_record_many_tasks_with_concurrency_keeps_task_order(tmp_path):
    tasks = make_tasks(20, "train") + make_tasks(10, "ood")
    traces = record(build_agent(ScriptedCalculatorTeacher()), tasks, tmp_path / "t.jsonl", concurrency=4,
                    progress=False)
    assert [t.task_id for t in traces] == [t.id for t in tasks]
    assert all(t.verdict == "correct" for t in traces)
    assert sorted(t.task_id for t in TraceStore(tmp_path / "t.jsonl").read()) == sorted(t.id for t in tasks)
    for trace, task in zip(traces, tasks):
        assert sorted({c.name for c in trace.tool_calls}) == task.metadata["tools"]
        assert [s.call_id for s in trace.tool_steps] == [c.id for c in trace.tool_calls]


def test_concurrency_is_not_capped_by_the_event_loops_default_thread_pool(tmp_path):
    # asyncio's default pool has min(32, CPUs + 4) threads, and a synchronous chat model runs its calls on it.
    concurrency = min(32, (os.cpu_count() or 1) + 4) + 1
    teacher = GatheringTeacher()
    teacher._barrier = threading.Barrier(concurrency, timeout=20)
    traces = record(build_agent(teacher), make_tasks(concurrency, "train"), tmp_path / "t.jsonl",
                    concurrency=concurrency, retries=0, progress=False)
    assert [t.error for t in traces] == [None] * concurrency and all(t.verdict == "correct" for t in traces)


def test_lenient_parse_marker_sets_parsed_from_text(tmp_path):
    (trace,) = record(build_agent(TextCallTeacher()), [QUESTION], tmp_path / "t.jsonl", progress=False)
    assert len(trace.tool_calls) == 3 and all(call.parsed_from_text for call in trace.tool_calls)


def test_resume_skips_recorded_runs_and_records_only_new_tasks(tmp_path):
    path, agent, tasks = tmp_path / "t.jsonl", build_agent(ScriptedCalculatorTeacher()), make_tasks(8)
    first = record(agent, tasks[:5], path, progress=False)
    assert len(lines(path)) == 5
    second = record(agent, tasks, path, progress=False)
    assert len(lines(path)) == 8
    assert [t.id for t in second[:5]] == [t.id for t in first]
    assert [t.task_id for t in second] == [t.id for t in tasks]
    third = record(agent, tasks, path, progress=False)
    assert len(lines(path)) == 8 and [t.id for t in third] == [t.id for t in second]
    more = record(agent, tasks[:2], TraceStore(path), samples=2, progress=False)
    assert len(lines(path)) == 10 and [t.key for t in more] == [(tasks[0].id, 0), (tasks[0].id, 1),
                                                                 (tasks[1].id, 0), (tasks[1].id, 1)]


KILL_SCRIPT = """
import sys, time
from mentor_agents.integrations.langgraph import record
from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent, make_tasks

class SlowTeacher(ScriptedCalculatorTeacher):
    def _generate(self, *args, **kwargs):
        time.sleep(0.1)
        return super()._generate(*args, **kwargs)

record(build_agent(SlowTeacher()), make_tasks(30), sys.argv[1], concurrency=2, progress=False)
"""


def test_kill_mid_run_then_resume_records_every_task_exactly_once(tmp_path):
    path = tmp_path / "t.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (path.exists() and len(lines(path)) >= 4):
            assert proc.poll() is None, "the recording process ended before it could be killed"
            assert time.monotonic() < deadline, "no traces written within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = len(lines(path))
    assert 4 <= written < 30

    traces = record(build_agent(ScriptedCalculatorTeacher()), make_tasks(30), path, progress=False)
    assert all(t.verdict == "correct" for t in traces)
    rows = [json.loads(line) for line in lines(path)]
    assert Counter(row["task_id"] for row in rows) == Counter(t.id for t in make_tasks(30))
    assert len(TraceStore(path).read()) == 30


def test_a_tool_that_raises_is_an_error_step_and_the_trace_completes(tmp_path):
    (trace,) = record(build_agent(ScriptedCalculatorTeacher()), [Task(id="z", input="What is 5 divided by 0?")],
                      tmp_path / "t.jsonl", progress=False)
    assert trace.error is None and trace.final_answer.endswith("Answer: unknown")
    (step,) = trace.tool_steps
    assert (step.name, step.args, step.error, step.result) == ("divide", {"a": 5, "b": 0}, True,
                                                               "cannot divide 5 by zero")


@tool
def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


def test_a_plain_exception_in_a_tool(tmp_path):
    # A graph whose ToolNode turns any exception into an error message: the run completes.
    bound = ScriptedCalculatorTeacher().bind_tools([divide])
    graph = StateGraph(MessagesState)
    graph.add_node("think", lambda state: {"messages": [bound.invoke(state["messages"])]})
    graph.add_node("act", ToolNode([divide], handle_tool_errors=True))
    graph.add_edge(START, "think")
    graph.add_conditional_edges("think", tools_condition, {"tools": "act", END: END})
    graph.add_edge("act", "think")
    (trace,) = record(graph.compile(), ["What is 8 divided by 0?"], tmp_path / "a.jsonl", progress=False)
    assert trace.error is None and trace.verdict == "unknown" and trace.final_answer.endswith("Answer: unknown")
    (step,) = trace.tool_steps
    assert step.error and "division by zero" in step.result and step.call_id == trace.tool_calls[0].id

    # create_agent's ToolNode re-raises it: the run fails, and the trace keeps the error and the steps so far.
    agent = create_agent(ScriptedCalculatorTeacher(), [divide])
    (trace,) = record(agent, ["What is 8 divided by 0?"], tmp_path / "b.jsonl", retries=0, progress=False)
    assert trace.error == "ZeroDivisionError: float division by zero" and trace.verdict == "unknown"
    assert [s.kind for s in trace.steps] == ["model", "tool"] and trace.tool_steps[0].error


def test_a_call_to_an_unknown_tool_is_recorded_from_the_state(tmp_path):
    (trace,) = record(build_agent(UnknownToolTeacher()), ["What is 5 percent?"], tmp_path / "t.jsonl",
                      progress=False)
    assert [s.kind for s in trace.steps] == ["model", "tool", "model"]
    step = trace.steps[1]
    assert (step.call_id, step.name, step.args, step.error) == ("call_p", "percent", {"x": 5}, True)
    assert "percent" in step.result


def test_transient_teacher_errors_are_retried(tmp_path):
    tasks = make_tasks(3)
    traces = record(build_agent(FlakyTeacher(failures=2)), tasks, tmp_path / "t.jsonl", concurrency=1, retries=2,
                    backoff_s=0.01, progress=False)
    assert all(t.verdict == "correct" and t.error is None for t in traces)
    assert sorted(t.metadata["attempts"] for t in traces) == [1, 1, 3]


@pytest.mark.parametrize("teacher,timeout_s,error", [
    (DownOnOneQuestionTeacher(poison="13 plus 13"), 300, "RuntimeError: teacher is down"),
    (HangsOnOneQuestionTeacher(poison="13 plus 13"), 1.0, "TimeoutError: no result within 1.0 s"),
])
def test_a_run_that_keeps_failing_becomes_a_failed_trace(tmp_path, teacher, timeout_s, error):
    tasks = make_tasks(4)
    tasks.insert(1, Task(id="bad", input="What is 13 plus 13?", ground_truth=26, verifier=NumericMatch()))
    path = tmp_path / "t.jsonl"
    traces = record(build_agent(teacher), tasks, path, timeout_s=timeout_s, retries=1, backoff_s=0.01,
                    progress=False)
    bad = traces[1]
    assert (bad.task_id, bad.error, bad.verdict, bad.final_answer) == ("bad", error, "unknown", None)
    assert bad.metadata["attempts"] == 2
    assert all(t.verdict == "correct" and t.error is None for t in traces if t.task_id != "bad")
    assert len(lines(path)) == 5
    assert "bad" not in {ref.task_id for ref in build_references(traces)}

    # Failed runs count as recorded, unless asked to run them again.
    assert len(record(build_agent(ScriptedCalculatorTeacher()), tasks, path, progress=False)) == 5
    assert len(lines(path)) == 5
    again = record(build_agent(ScriptedCalculatorTeacher()), tasks, path, retry_failed=True, progress=False)
    assert again[1].error is None and again[1].verdict == "correct" and len(lines(path)) == 6
    latest = record(build_agent(ScriptedCalculatorTeacher()), tasks, path, progress=False)
    assert latest[1].id == again[1].id and len(lines(path)) == 6


def test_teacher_endpoint_is_recorded_without_secrets(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port: the run fails fast, and the trace still names the teacher.
    teacher = ChatOpenAI(model="teacher-x", base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-secret-123",
                         default_headers={"X-Api-Key": "hdr-secret-456"}, max_retries=0)
    path = tmp_path / "t.jsonl"
    (trace,) = record(build_agent(teacher), [QUESTION], path, retries=0, progress=False)
    assert trace.error == "OpenAIConnectionError: Connection error."
    assert trace.teacher_model == "teacher-x" and trace.teacher_endpoint == f"http://127.0.0.1:{port}/v1"
    assert "secret" not in path.read_text()


def test_string_tasks_redaction_and_bad_arguments(tmp_path):
    agent = build_agent(ScriptedCalculatorTeacher())
    path = tmp_path / "t.jsonl"
    (trace,) = record(agent, ["What is 2 plus 3?"], path, progress=False,
                      redact=lambda t: t.model_copy(update={"task_input": "[redacted]"}))
    assert trace.task_id.startswith("task-") and trace.final_answer == "Answer: 5" and trace.verdict == "unknown"
    assert TraceStore(path).read()[0].task_input == "[redacted]"
    assert record(agent, ["What is 2 plus 3?"], path, progress=False)[0].id == trace.id
    with pytest.raises(ValueError, match="appears more than once"):
        record(agent, ["What is 2 plus 3?", "What is 2 plus 3?"], path, progress=False)
    with pytest.raises(ValueError, match="concurrency"):
        record(agent, ["What is 2 plus 3?"], path, concurrency=0, progress=False)


def test_record_inside_an_event_loop_points_to_arecord(tmp_path):
    agent = build_agent(ScriptedCalculatorTeacher())

    async def main():
        with pytest.raises(RuntimeError, match="arecord"):
            record(agent, [QUESTION], tmp_path / "t.jsonl", progress=False)
        return await arecord(agent, [QUESTION], tmp_path / "t.jsonl", progress=False)

    (trace,) = asyncio.run(main())
    assert trace.final_answer == "Answer: 63"


def test_traces_load_with_datasets(tmp_path):
    import datasets

    path = tmp_path / "t.jsonl"
    tasks = make_tasks(15) + make_tasks(10, "ood") + [Task(id="z", input="What is 5 divided by 0?")]
    record(build_agent(ScriptedCalculatorTeacher()), tasks, path, progress=False)
    record(build_agent(DownOnOneQuestionTeacher(poison="13 plus 13")), ["What is 13 plus 13?"], path, retries=0,
           progress=False)
    rows = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(rows) == 27
    assert sorted(rows["task_id"]) == sorted([t.id for t in tasks] + [TraceStore(path).read()[-1].task_id])
    first = rows[0]
    assert first["steps"][0]["kind"] == "model" and first["steps"][0]["input_messages"][0]["role"] == "system"


def test_invalid_tool_calls_are_kept_in_the_recorded_output():
    from langchain_core.messages import AIMessage

    from mentor_agents.integrations.langgraph import to_openai_messages

    message = AIMessage(content="", invalid_tool_calls=[{"name": "add", "args": '{"a": 1,', "id": "c1", "error": "bad JSON", "type": "invalid_tool_call"}])
    (out,) = to_openai_messages([message])
    assert out["invalid_tool_calls"] == [{"name": "add", "arguments": '{"a": 1,', "error": "bad JSON"}]
