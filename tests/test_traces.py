"""TraceStore: fsync'd appends, resume keys, the corrupt-line report, partial tails, datasets loading; references."""

import json

import pytest

from mentor_agents.references import build_references, load_references, save_references, summarize
from mentor_agents.tasks import NumericMatch
from mentor_agents.traces import RecordFileError, ToolStep, TraceStore
from store_writers import append_many, make_trace


def test_append_read_roundtrip_and_resume_keys(tmp_path):
    store = TraceStore(tmp_path / "traces.jsonl")
    assert store.read() == []
    store.append(make_trace("t1"))
    store.append(make_trace("t2", sample=1))
    traces = TraceStore(store.path).read()
    assert [t.task_id for t in traces] == ["t1", "t2"]
    assert traces[0] == make_trace("t1").model_copy(update={"id": traces[0].id, "started_at": traces[0].started_at})
    assert traces[0].tool_calls[0].args == {"a": 2, "b": 3}
    assert isinstance(traces[0].steps[1], ToolStep)
    assert store.recorded_keys() == {("t1", 0), ("t2", 1)}


def test_corrupt_line_names_file_line_and_field(tmp_path):
    path = tmp_path / "traces.jsonl"
    good = make_trace().model_dump_json()
    bad_field = json.loads(good)
    bad_field["steps"][1]["error"] = "not-a-bool"
    path.write_text("\n".join([good, "{not json", json.dumps(bad_field), json.dumps([1]), good]) + "\n")
    with pytest.raises(RecordFileError) as err:
        TraceStore(path).read()
    assert err.value.line == 2 and err.value.field == "<json>" and str(path) in str(err.value)

    store = TraceStore(path)
    traces = store.read(skip_invalid=True)
    assert len(traces) == 2
    assert [(e.line, e.field) for e in store.skipped] == [(2, "<json>"), (3, "steps.1.tool.error"), (4, "<root>")]


def test_schema_version_mismatch_is_named(tmp_path):
    path = tmp_path / "traces.jsonl"
    data = json.loads(make_trace().model_dump_json())
    data["schema_version"] = 99
    path.write_text(json.dumps(data) + "\n")
    with pytest.raises(RecordFileError, match="schema version 99"):
        TraceStore(path).read()


def test_partial_tail_from_a_kill_is_set_aside(tmp_path):
    store = TraceStore(tmp_path / "traces.jsonl")
    store.append(make_trace("t1"))
    with open(store.path, "a") as f:
        f.write(make_trace("t2").model_dump_json()[:50])  # a kill mid-write
    with pytest.raises(RecordFileError):
        store.read()
    store.append(make_trace("t3"))
    assert [t.task_id for t in store.read()] == ["t1", "t3"]
    assert (tmp_path / "traces.jsonl.partial").read_text().startswith('{"schema_version"')


def test_traces_load_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    store = TraceStore(tmp_path / "traces.jsonl")
    for i in range(3):
        store.append(make_trace(f"t{i}"))
    ds = datasets.load_dataset("json", data_files=str(store.path), split="train")
    assert ds.num_rows == 3 and ds[0]["task_id"] == "t0" and ds[0]["final_answer"] == "Answer: 5"


def test_references_filter_summary_and_roundtrip(tmp_path):
    traces = [
        make_trace("t1"),
        make_trace("t1", sample=1),
        make_trace("t2", verdict="wrong"),
        make_trace("t3", verdict="unknown"),
        make_trace("t4", error="TimeoutError: teacher did not answer"),
    ]
    refs = build_references(traces)
    assert [r.task_id for r in refs] == ["t1"]
    ref = refs[0]
    assert ref.teacher_tools == ["add"] and ref.teacher_calls[0].args == {"a": 2, "b": 3}
    assert ref.teacher_answer == "Answer: 5" and ref.ground_truth == 5 and ref.tool_names == {"add"}
    assert [r.task_id for r in build_references(traces, keep=("correct", "unknown"))] == ["t1", "t3"]

    save_references(refs, tmp_path / "refs.jsonl")
    assert load_references(tmp_path / "refs.jsonl") == refs

    summary = summarize(traces)
    assert summary.traces == 5 and summary.failed == 1
    assert summary.success_rate == pytest.approx(2 / 3)
    assert summary.tool_counts == {"add": 4}
    assert "teacher success rate | 66.7%" in str(summary)


def test_self_consistency_verdicts():
    from mentor_agents.references import self_consistency

    def sample(task_id, k, answer):
        return make_trace(task_id, verdict="unknown", sample=k).model_copy(update={"final_answer": answer})

    traces = [
        sample("a", 0, "Answer: 5"), sample("a", 1, "The result is 5.0"), sample("a", 2, "Answer: 6"),
        sample("b", 0, "Answer: 1"), sample("b", 1, "Answer: 2"),  # no majority
        make_trace("c", verdict="wrong"),  # verified tasks keep their verdict
    ]
    judged = self_consistency(traces)
    assert [t.verdict for t in judged] == ["correct", "correct", "wrong", "unknown", "unknown", "wrong"]
    assert judged[0].ground_truth == "Answer: 5" and judged[0].metadata["agreement"] == pytest.approx(2 / 3)
    assert isinstance(judged[0].verifier, NumericMatch)
    assert [r.task_id for r in build_references(judged)] == ["a"]


def test_complete_last_line_without_newline_is_a_trace_not_a_partial_tail(tmp_path):
    store = TraceStore(tmp_path / "traces.jsonl")
    store.path.write_text(make_trace("t1").model_dump_json())  # written by a tool that omits the final newline
    store.append(make_trace("t2"))
    assert [t.task_id for t in store.read()] == ["t1", "t2"]
    assert not (tmp_path / "traces.jsonl.partial").exists()


def test_two_processes_appending_to_one_store_lose_nothing(tmp_path):
    """One process appends large traces while another appends small ones: an append must never take the other
    process's unfinished line for a partial tail from a kill (it did: the large traces vanished)."""
    import multiprocessing

    path = str(tmp_path / "traces.jsonl")
    context = multiprocessing.get_context("spawn")
    large = context.Process(target=append_many, args=(path, "large", 6, 8_000_000))
    small = context.Process(target=append_many, args=(path, "small", 400, 0))
    large.start(), small.start()
    large.join(), small.join()
    assert large.exitcode == 0 and small.exitcode == 0
    ids = [t.task_id for t in TraceStore(path).read()]  # strict: every line is whole
    assert sorted(ids) == sorted([f"large{i}" for i in range(6)] + [f"small{i}" for i in range(400)])
    assert not (tmp_path / "traces.jsonl.partial").exists()


def test_threads_appending_to_one_store_lose_nothing(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    path = str(tmp_path / "traces.jsonl")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(append_many, [path] * 4, ["a", "b", "c", "d"], [3, 100, 100, 3], [4_000_000, 0, 0, 4_000_000]))
    assert len(TraceStore(path).read()) == 206
