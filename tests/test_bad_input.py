"""Arbitrary bytes and JSON into the trace loader, the reference builder and the tool-call parsers: the only
outcomes allowed are a clear error or a valid result. Plus a full disk while appending."""

import errno
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mentor_agents.references import RewardReference, build_references, load_references
from mentor_agents.toolcalls import ParsedMessage, parse_tool_calls
from mentor_agents.traces import RecordFileError, Trace, TraceStore

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
FIELDS = ["task_id", "task_input", "steps", "tools", "verdict", "final_answer", "usage", "kind", "tool_calls", "name"]
trace_like = st.fixed_dictionaries({}, optional={k: json_values for k in FIELDS})
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(st.binary(max_size=300))
def test_trace_loader_on_arbitrary_bytes(tmp_path, data):
    path = tmp_path / "traces.jsonl"
    path.write_bytes(data)
    store = TraceStore(path)
    try:
        traces = store.read()
    except RecordFileError as e:
        assert str(path) in str(e) and e.line >= 1 and e.field
    else:
        assert all(isinstance(t, Trace) for t in traces)
    traces = store.read(skip_invalid=True)
    assert all(isinstance(t, Trace) for t in traces)


@SETTINGS
@given(st.lists(trace_like | json_values, max_size=4))
def test_trace_loader_and_reference_builder_on_arbitrary_json(tmp_path, records):
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    traces = TraceStore(path).read(skip_invalid=True)
    references = build_references(traces, keep=("correct", "wrong", "unknown"))
    assert all(isinstance(r, RewardReference) for r in references)
    ref_path = tmp_path / "refs.jsonl"
    ref_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    try:
        load_references(ref_path)
    except RecordFileError as e:
        assert str(ref_path) in str(e)


call_text = st.one_of(
    st.text(max_size=200),
    st.builds(lambda body: f"<tool_call>{body}</tool_call>", st.text(max_size=80)),
    st.builds(lambda v: f"<tool_call>{json.dumps(v)}</tool_call>", json_values),
    st.builds(lambda v: f"functools[{json.dumps(v)}", json_values),
    st.builds(lambda v: f"text ```json\n{json.dumps(v)}\n``` more", json_values),
    st.builds(lambda v: f"I will call {json.dumps(v)} now", json_values),
)


@settings(max_examples=300, deadline=None)
@given(call_text, st.booleans(), st.sampled_from([None, ["add"], []]))
def test_tool_call_parser_never_raises(text, lenient, allowed):
    parsed = parse_tool_calls(text, allowed=allowed, lenient=lenient)
    assert isinstance(parsed, ParsedMessage)
    for call in parsed.calls:
        assert isinstance(call.name, str) and call.name and isinstance(call.arguments, dict)
        assert allowed is None or call.name in allowed
    for bad in parsed.invalid:
        assert bad.error


def minimal_trace(task_id):
    return Trace(task_id=task_id, task_input="q", final_answer="Answer: 1")


@pytest.mark.parametrize("written", [0, 25])
def test_a_full_disk_fails_the_append_loudly_and_keeps_the_store(tmp_path, monkeypatch, written):
    import mentor_agents.traces as traces_module

    store = TraceStore(tmp_path / "traces.jsonl")
    store.append(minimal_trace("t1"))
    real_write = os.write

    def full_disk(fd, data):
        if written:
            real_write(fd, data[:written])  # part of the line made it before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(traces_module.os, "write", full_disk)
    with pytest.raises(OSError, match="No space left on device") as err:
        store.append(minimal_trace("t2"))
    assert str(store.path) in str(err.value)
    monkeypatch.setattr(traces_module.os, "write", real_write)

    store.append(minimal_trace("t3"))  # once there is room again
    assert [t.task_id for t in store.read()] == ["t1", "t3"]
