"""Traces for the store tests, and a writer for the multi-writer ones, in their own module: a spawned process must
import the writer by a top-level name (the tests folder is on its ``sys.path``; the ``tests`` package is not)."""

from mentor_agents.distill import RunState
from mentor_agents.tasks import NumericMatch
from mentor_agents.messages import ToolCall
from mentor_agents.traces import ModelStep, ToolStep, Trace, TraceStore


def make_trace(task_id="t1", verdict="correct", error=None, sample=0):
    call = ToolCall(id="call_1", name="add", args={"a": 2, "b": 3})
    return Trace(
        task_id=task_id,
        sample=sample,
        task_input="What is 2 plus 3?",
        ground_truth=5,
        verifier=NumericMatch(),
        tools=[{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
        steps=[
            ModelStep(
                input_messages=[{"role": "user", "content": "What is 2 plus 3?"}],
                output={"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
                tool_calls=[call],
            ),
            ToolStep(call_id="call_1", name="add", args={"a": 2, "b": 3}, result="5"),
            ModelStep(input_messages=[], output={"role": "assistant", "content": "Answer: 5"}),
        ],
        final_answer="Answer: 5",
        verdict=verdict,
        error=error,
    )


def append_many(path: str, prefix: str, count: int, payload: int) -> None:
    store = TraceStore(path)
    for i in range(count):
        store.append(make_trace(f"{prefix}{i}").model_copy(update={"metadata": {"pad": "x" * payload}}))


def mark_many(run_dir: str, prefix: str, count: int) -> None:
    state = RunState.open(run_dir)
    for i in range(count):
        state.mark(f"{prefix}{i}", step=i)
