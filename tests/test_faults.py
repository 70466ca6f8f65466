"""Faults end in a recorded error, a retry or a clear message, never a hang or a crash: a teacher endpoint (a real
HTTP server on loopback) that answers malformed JSON or tool calls with invalid arguments, a tool that hangs (per-tool
timeout), a run directory of another version, and writes killed before their rename (atomic writes).

500s and a teacher that hangs past its timeout are in test_openai_teacher.py, a tool that raises in test_recording.py,
a student that emits garbage in test_student_model.py and test_training.py, a full disk in test_bad_input.py.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool

from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent
from mentor_agents.distill import RunState, distill, write_json_atomic
from mentor_agents.files import save_dir_atomically, write_text_atomic
from mentor_agents.integrations.langgraph import record, with_tool_timeout
from mentor_agents.integrations.openai.teacher import OpenAITeacher
from mentor_agents.references import build_references, load_references, save_references
from mentor_agents.tasks import NumericMatch, Task, read_tasks, write_tasks
from mentor_agents.traces import ModelStep, RecordFileError, TraceStore

CALLS = {"add": 0}
RELEASE = threading.Event()


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    CALLS["add"] += 1
    return a + b


@tool
def wait_for_release() -> str:
    """A tool that blocks until the test releases it."""
    RELEASE.wait(60)
    return "released"


def completion(message: dict) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def call(name: str, arguments: str) -> dict:
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}]}


# What the fake teacher answers to each question on its first turn; after a tool result it answers "Answer: done".
FIRST_TURN = {
    "truncated json": (200, '{"id": "chatcmpl-1", "choices": [{"message": {"role": "assist'),
    "not a completion": (200, json.dumps({"hello": "world"})),
    "html error page": (200, "<html><body>Bad gateway</body></html>"),
    "args not json": (200, json.dumps(completion(call("add", '{"a": 3, "b": ')))),
    "args wrong type": (200, json.dumps(completion(call("add", '{"a": "three", "b": 2}')))),
    "args missing": (200, json.dumps(completion(call("add", '{"a": 3}')))),
    "args not an object": (200, json.dumps(completion(call("add", '[3, 2]')))),
    "undeclared tool": (200, json.dumps(completion(call("launch_rocket", '{"target": "moon"}')))),
    "good call": (200, json.dumps(completion(call("add", '{"a": 3, "b": 2}')))),
}


class FakeTeacher(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        messages = body["messages"]
        if messages[-1]["role"] == "tool":
            status, text = 200, json.dumps(completion({"role": "assistant", "content": "Answer: done"}))
        else:
            status, text = FIRST_TURN[messages[-1]["content"]]
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def fake_teacher():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTeacher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def teacher_agent():
    with fake_teacher() as url:
        model = OpenAITeacher(base_url=url, model="fake", api_key="sk-test", timeout_s=30).chat_model()
        yield create_agent(model, [add, wait_for_release], system_prompt="Use the tools.")


def run(agent, questions, path, **kwargs):
    tasks = [Task(id=q.replace(" ", "-"), input=q) for q in questions]
    traces = record(agent, tasks, path, concurrency=2, timeout_s=30, retries=1, backoff_s=0.01, progress=False,
                    **kwargs)
    return {t.task_input: t for t in traces}


@pytest.mark.parametrize("question", ["truncated json", "not a completion", "html error page"])
def test_malformed_teacher_response_is_retried_then_a_failed_trace(teacher_agent, tmp_path, question):
    trace = run(teacher_agent, [question], tmp_path / "t.jsonl")[question]
    assert trace.error and trace.verdict == "unknown" and trace.metadata["attempts"] == 2
    assert TraceStore(tmp_path / "t.jsonl").read()[0].error == trace.error


def test_tool_call_arguments_that_are_not_json_are_an_invalid_call_never_run(teacher_agent, tmp_path):
    before = CALLS["add"]
    trace = run(teacher_agent, ["args not json"], tmp_path / "t.jsonl")["args not json"]
    assert CALLS["add"] == before and trace.error is None and trace.tool_steps == []
    (step,) = [s for s in trace.steps if isinstance(s, ModelStep)]
    assert step.tool_calls == [] and step.output["invalid_tool_calls"][0]["name"] == "add"


@pytest.mark.parametrize("question", ["args wrong type", "args missing", "args not an object", "undeclared tool"])
def test_tool_call_arguments_off_the_schema_are_an_error_result_never_run(teacher_agent, tmp_path, question):
    before = CALLS["add"]
    trace = run(teacher_agent, [question], tmp_path / "t.jsonl")[question]
    assert CALLS["add"] == before  # validated against the tool's schema before anything ran
    if question == "args not an object":
        # langchain-openai fails to build the message from a JSON array of arguments: a failed run, after a retry
        assert "Input should be a valid dictionary" in trace.error and trace.metadata["attempts"] == 2
        assert trace.tool_steps == [] and trace.verdict == "unknown"
        return
    (step,) = trace.tool_steps
    assert step.error and trace.error is None and trace.final_answer == "Answer: done"
    expected = {"args wrong type": "a: Input should be a valid number", "args missing": "b: Field required",
                "undeclared tool": "launch_rocket is not a valid tool"}[question]
    assert expected in step.result, step.result


def test_a_valid_call_runs_once(teacher_agent, tmp_path):
    before = CALLS["add"]
    trace = run(teacher_agent, ["good call"], tmp_path / "t.jsonl")["good call"]
    assert CALLS["add"] == before + 1 and trace.tool_steps[0].result == "5.0"


# ---------------------------------------------------------------------------------------------- hanging tools


class HangToolTeacher(ScriptedCalculatorTeacher):
    """Calls ``wait_for_release`` on its first turn, then answers with the tool's result."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        from langchain_core.messages import AIMessage
        from langchain_core.outputs import ChatGeneration, ChatResult

        if isinstance(messages[-1], ToolMessage):
            message = AIMessage(f"Answer: {messages[-1].text}")
        else:
            message = AIMessage("", tool_calls=[{"name": "wait_for_release", "args": {}, "id": "call_w"}])
        return ChatResult(generations=[ChatGeneration(message=message)])


@pytest.mark.parametrize("mode", ["invoke", "record"])
def test_a_hanging_tool_times_out_into_an_error_tool_message(tmp_path, mode):
    RELEASE.clear()
    agent = create_agent(HangToolTeacher(), [add, wait_for_release])
    try:
        if mode == "invoke":
            out = with_tool_timeout(agent, 0.3).invoke({"messages": [("user", "wait")]})
            result = next(m for m in out["messages"] if isinstance(m, ToolMessage))
            assert result.status == "error" and "did not finish within 0.3 s" in result.content
            assert out["messages"][-1].content.startswith("Answer: Error: ToolException")
        else:
            (trace,) = record(agent, [Task(id="w", input="wait")], tmp_path / "t.jsonl", tool_timeout_s=0.3,
                              timeout_s=30, progress=False)
            (step,) = trace.tool_steps
            assert trace.error is None and step.error and "did not finish within 0.3 s" in step.result
    finally:
        RELEASE.set()


def test_tool_timeout_keeps_the_original_graph_and_fast_tools():
    agent = build_agent(ScriptedCalculatorTeacher(), "stategraph")
    timed = with_tool_timeout(agent, 5)
    assert timed is not agent
    out = timed.invoke({"messages": [("user", "What is 2 plus 3?")]})
    assert out["messages"][-1].content.endswith("Answer: 5")
    with pytest.raises(ValueError, match="seconds"):
        with_tool_timeout(agent, 0)


# ------------------------------------------------------------------------------------- incompatible run dirs


def test_distill_on_a_run_dir_of_another_state_version_says_so(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"version": 99, "done": {}}))
    with pytest.raises(RuntimeError, match=r"incompatible mentor_agents \(state version 99, this one reads 1\)"):
        distill(build_agent(ScriptedCalculatorTeacher()), ["What is 2 plus 3?"], student="tiny", run_dir=tmp_path)


def test_distill_on_traces_of_another_schema_version_says_so(tmp_path):
    task = Task(id="t1", input="What is 2 plus 3?", ground_truth=5, verifier=NumericMatch())
    record(build_agent(ScriptedCalculatorTeacher()), [task], tmp_path / "traces.jsonl", progress=False)
    line = json.loads((tmp_path / "traces.jsonl").read_text())
    (tmp_path / "traces.jsonl").write_text(json.dumps({**line, "schema_version": 2}) + "\n")
    with pytest.raises(RecordFileError, match=r"traces.jsonl:1: field 'schema_version': written with schema version 2"):
        distill(build_agent(ScriptedCalculatorTeacher()), [task], eval_tasks=[task], student="tiny", run_dir=tmp_path)
    with pytest.raises(RecordFileError, match="schema version 2"):  # skipping invalid lines never hides a version
        TraceStore(tmp_path / "traces.jsonl").read(skip_invalid=True)


# ------------------------------------------------------------------------------------------------ atomic writes


def killed_before_rename(monkeypatch):
    def replace(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", replace)


def test_state_tasks_references_metrics_and_report_writes_are_atomic(tmp_path, monkeypatch):
    """Each writer, stopped just before its rename, leaves the previous complete file in place."""
    run = RunState.open(tmp_path)
    task = Task(id="t1", input="What is 2 plus 3?", ground_truth=5, verifier=NumericMatch())
    traces = record(build_agent(ScriptedCalculatorTeacher()), [task], tmp_path / "traces.jsonl", progress=False)
    run.save_tasks({"train": [task], "test": [], "ood": []})
    save_references(build_references(traces), tmp_path / "references.jsonl")
    write_json_atomic(tmp_path / "metrics.json", {"ok": 1})
    write_text_atomic(tmp_path / "report.md", "# old")
    write_tasks([task], tmp_path / "tasks.jsonl")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    killed_before_rename(monkeypatch)
    writes = [
        lambda: run.mark("traces"),
        lambda: run.save_tasks({"train": [], "test": [task], "ood": []}),
        lambda: save_references([], tmp_path / "references.jsonl"),
        lambda: write_json_atomic(tmp_path / "metrics.json", {"ok": 2}),
        lambda: write_text_atomic(tmp_path / "report.md", "# new"),
        lambda: write_tasks([], tmp_path / "tasks.jsonl"),
    ]
    for write in writes:
        with pytest.raises(OSError, match="killed before the rename"):
            write()
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.name.startswith(".")} \
        == before
    assert RunState.open(tmp_path).done == {"tasks": True}
    assert len(load_references(tmp_path / "references.jsonl")) == 1 and len(read_tasks(tmp_path / "tasks.jsonl")) == 1


def test_processes_sharing_a_run_directory_keep_each_others_stages(tmp_path):
    import multiprocessing

    from store_writers import mark_many

    first, second = RunState.open(tmp_path), RunState.open(tmp_path)
    first.mark("tasks")
    second.mark("untrained")
    assert set(RunState.open(tmp_path).done) == {"tasks", "untrained"}

    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=mark_many, args=(str(tmp_path), prefix, 60)) for prefix in ("sft", "grpo")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert [w.exitcode for w in writers] == [0, 0]
    done = RunState.open(tmp_path).done
    assert set(done) == {"tasks", "untrained"} | {f"{p}{i}" for p in ("sft", "grpo") for i in range(60)}
    assert done["grpo59"] == {"step": 59}
    assert RunState.open(tmp_path, resume=False).done == {} and RunState.open(tmp_path).done == {}


def test_adapter_merged_and_export_writes_are_atomic(tiny, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from mentor_agents.export import ModelCard, export_student
    from mentor_agents.training import TrainResult, merge

    model, tokenizer = tiny
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    card = ModelCard(base_model="tiny", method="sft")
    export_student(peft_model, tokenizer, tmp_path / "export", card)
    save_dir_atomically(tmp_path / "adapter", peft_model.save_pretrained)
    result = TrainResult(method="sft", output_dir=tmp_path, adapter_dir=tmp_path / "adapter", base_model="tiny",
                         model=peft_model, tokenizer=tokenizer)
    snapshot = {d: sorted(p.name for p in (tmp_path / d).rglob("*")) for d in ("export", "adapter")}

    killed_before_rename(monkeypatch)
    with pytest.raises(OSError, match="killed before the rename"):
        export_student(peft_model, tokenizer, tmp_path / "export", card)
    with pytest.raises(OSError, match="killed before the rename"):
        save_dir_atomically(tmp_path / "adapter", peft_model.save_pretrained)
    with pytest.raises(OSError, match="killed before the rename"):
        merge(result, tmp_path / "merged")
    monkeypatch.undo()
    assert {d: sorted(p.name for p in (tmp_path / d).rglob("*")) for d in ("export", "adapter")} == snapshot
    assert not (tmp_path / "merged").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # staging dirs were removed


def test_replace_dir_survives_a_failed_second_rename_and_a_kill_between_the_renames(tiny, tmp_path, monkeypatch):
    """`replace_dir` renames the old directory aside, then the new one into place. A failure of the second rename
    puts the old one back; a kill between the two leaves only ``.adapter.old-PID``, which the next open restores."""
    from peft import LoraConfig, get_peft_model

    from mentor_agents.files import replace_dir
    from mentor_agents.student import load_student
    from mentor_agents.training import load_trained

    model, tokenizer = tiny
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    adapter = tmp_path / "adapter"
    save_dir_atomically(adapter, peft_model.save_pretrained)
    tokenizer.save_pretrained(adapter)
    files = sorted(p.name for p in adapter.iterdir())
    base = str(model.config.name_or_path)

    real_replace, calls = os.replace, []

    def second_rename_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("the second rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="second rename failed"):
        save_dir_atomically(adapter, peft_model.save_pretrained)
    monkeypatch.undo()
    assert sorted(p.name for p in adapter.iterdir()) == files
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    for load in (lambda: load_trained(adapter, base), lambda: load_student(str(adapter)),
                 lambda: replace_dir(Path(tempfile.mkdtemp(dir=tmp_path)), adapter)):
        os.rename(adapter, tmp_path / ".adapter.old-12345")  # a kill between the two renames leaves this
        load()
        assert adapter.is_dir() and not (tmp_path / ".adapter.old-12345").exists()
