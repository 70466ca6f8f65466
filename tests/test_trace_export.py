"""`mentor export-traces`: the calculator agent's verified teacher traces as an OpenAI fine-tuning file and as a
parquet dataset, both loaded back."""

import json

import torch
from datasets import load_dataset

from mentor_agents.app.cli import main
from mentor_agents.trace_export import verified_traces

torch.set_num_threads(1)


def test_export_traces_openai_and_hf_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["record", "calculator", "--run-dir", str(run), "--concurrency", "2", "--num-tasks", "4",
                 "--num-eval", "1", "--num-ood", "1"]) == 0
    traces = verified_traces(run)
    assert traces

    assert main(["export-traces", str(run), "--format", "openai", "--out", str(tmp_path / "t.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(lines) == len(traces)
    first = lines[0]
    assert first["tools"] == traces[0].tools
    calls = [c for m in first["messages"] for c in m.get("tool_calls", [])]
    assert calls and all(c["type"] == "function" and isinstance(c["function"]["arguments"], str) for c in calls)
    assert json.loads(calls[0]["function"]["arguments"]) == traces[0].tool_calls[0].args
    assert first["messages"][-1]["role"] == "assistant" and first["messages"][-1]["content"] == traces[0].final_answer
    results = [m for m in first["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results] == [c["id"] for c in calls]

    assert main(["export-traces", str(run), "--format", "hf", "--out", str(tmp_path / "ds")]) == 0
    dataset = load_dataset("parquet", data_dir=str(tmp_path / "ds"), split="train")
    assert len(dataset) == len(traces)
    row = dataset[0]
    assert json.loads(row["tools"]) == first["tools"] and row["task_id"] == traces[0].task_id
    assert [m["role"] for m in row["messages"]] == [m["role"] for m in first["messages"]]
    assert [c["function"] for m in row["messages"] for c in (m["tool_calls"] or [])] == \
        [c["function"] for c in calls]
