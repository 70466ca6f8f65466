"""A run's verified teacher traces as training data for other tools: OpenAI's chat fine-tuning JSONL, or a
`datasets` dataset in parquet.

```python
export_traces("runs/calc", "calc.jsonl", "openai")     # {"messages": [...], "tools": [...]} per line
export_traces("runs/calc", "calc-traces", "hf")        # calc-traces/data/train-00000-of-00001.parquet
load_dataset("parquet", data_dir="calc-traces")       # or Dataset.push_to_hub
```

Only traces the run verified correct go out (after teacher self-consistency where tasks have no verifier), the same
ones `distill` learns from. Tool-call arguments are JSON strings, as OpenAI's format has them; in the parquet dataset
``tools`` is a JSON string too, since Arrow would otherwise merge every tool's parameter schema into one struct.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mentor_agents.errors import InvalidInputError
from mentor_agents.references import self_consistency
from mentor_agents.traces import Trace, TraceStore


def verified_traces(run_dir: str | os.PathLike[str]) -> list[Trace]:
    """The run's teacher traces (``traces.jsonl``) that are verified correct and ended without an error."""
    store = Path(run_dir) / "traces.jsonl"
    if not store.is_file():
        raise FileNotFoundError(f"{store} does not exist: record teacher traces first (`mentor record`)")
    return [t for t in self_consistency(TraceStore(store).runs().values())
            if t.verdict == "correct" and t.error is None]


def openai_message(message: dict[str, Any]) -> dict[str, Any]:
    """One message in OpenAI's chat format: tool calls with ids, ``type`` and JSON-string arguments."""
    out: dict[str, Any] = {"role": message["role"], "content": message.get("content") or ""}
    if message.get("tool_calls"):
        out["tool_calls"] = []
        for i, call in enumerate(message["tool_calls"]):
            function = call.get("function", call)
            arguments = function.get("arguments", function.get("args", {}))
            out["tool_calls"].append({
                "id": call.get("id") or f"call_{i}", "type": "function",
                "function": {"name": function["name"],
                             "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)},
            })
    if message["role"] == "tool":
        out["tool_call_id"] = message.get("tool_call_id") or ""
    return out


def openai_example(trace: Trace) -> dict[str, Any]:
    """``{"messages", "tools"}``: one line of an OpenAI chat fine-tuning file."""
    from mentor_agents.training import conversation

    return {"messages": [openai_message(m) for m in conversation(trace)], "tools": trace.tools}


def export_traces(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], format: str) -> int:
    """Write the verified traces of ``run_dir`` to ``out`` as ``openai`` (a JSONL file) or ``hf`` (a directory with
    ``data/train-00000-of-00001.parquet``); returns how many were written."""
    from mentor_agents.files import write_text_atomic

    if format not in ("openai", "hf"):
        raise InvalidInputError(f"unknown trace export format {format!r}; choose openai or hf")
    traces = verified_traces(run_dir)
    examples = [openai_example(t) for t in traces]
    if format == "openai":
        write_text_atomic(Path(out), "".join(json.dumps(e) + "\n" for e in examples))
        return len(examples)
    from datasets import Dataset

    rows = [{"task_id": t.task_id, "task_input": t.task_input, "teacher_model": t.teacher_model,
             "messages": e["messages"], "tools": json.dumps(e["tools"])} for t, e in zip(traces, examples)]
    (Path(out) / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(Path(out) / "data" / "train-00000-of-00001.parquet"))
    return len(rows)
