"""Record teacher traces from any compiled LangGraph graph: a callback handler that sees every model and tool call,
and `record`, which runs the graph over many tasks with bounded concurrency, timeouts, retries and resume.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage, convert_to_messages
from langchain_core.outputs import LLMResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.errors import GraphRecursionError
from tqdm.auto import tqdm

from mentor_agents.environment import Environment, EnvironmentFactory, map_agent
from mentor_agents.integrations.langgraph.safety import with_tool_timeout
from mentor_agents.messages import PARSED_FROM_TEXT, ToolCall, content_text
from mentor_agents.tasks import Task, is_custom
from mentor_agents.traces import ModelStep, ToolStep, Trace, TraceStore, Usage

_ENDPOINT_FIELDS = ("openai_api_base", "base_url", "azure_endpoint")


def to_openai_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain messages (or anything `convert_to_messages` accepts) as OpenAI chat dicts, tool-call args as dicts."""
    return [_to_openai(message) for message in convert_to_messages(messages)]


def _to_openai(message: BaseMessage) -> dict[str, Any]:
    role = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool", "developer": "developer"}.get(
        message.type
    )
    if role is None:
        raise ValueError(f"cannot convert a message of type {message.type!r} to the OpenAI format")
    out: dict[str, Any] = {"role": role, "content": _content(message.content)}
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [
            {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["args"]}}
            for call in message.tool_calls
        ]
    if isinstance(message, AIMessage) and message.invalid_tool_calls:
        out["invalid_tool_calls"] = [
            {"name": call.get("name"), "arguments": call.get("args"), "error": call.get("error")}
            for call in message.invalid_tool_calls
        ]
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
        if message.name:
            out["name"] = message.name
    return out


def _content(content: str | list[Any]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    blocks = [{"type": "text", "text": block} if isinstance(block, str) else block for block in content]
    # Provider tool-call blocks duplicate AIMessage.tool_calls, which become the OpenAI "tool_calls" field.
    blocks = [block for block in blocks if block.get("type") not in ("tool_use", "tool_call", "function_call")]
    if all(block.get("type") == "text" for block in blocks):
        return "".join(block["text"] for block in blocks)
    return blocks


def _public_url(url: str) -> str:
    # Keep scheme, host and path only: credentials can hide in the userinfo or the query string.
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class RunStopped(RuntimeError):
    """A bounded run was ended: ``reason`` is ``"turn_limit"`` (a model turn past ``max_turns``) or ``"loop"`` (a
    model turn repeating the previous turn's tool calls exactly)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class TraceRecorder(BaseCallbackHandler):
    """Collects the model and tool steps of one graph run, in the order they started, whatever the node names.

    Pass one fresh recorder per run: ``graph.invoke(inputs, config={"callbacks": [recorder]})``; then
    `to_trace` builds the `Trace`. Records the exact model inputs, bound tool schemas, system prompt, outputs, tool
    calls, usage and latencies; the teacher's model name and base URL, never its API key or headers.

    With ``max_turns``, a model call past that many raises `RunStopped` ("turn_limit"); with ``stop_loops``, a model
    turn whose tool calls (names and arguments) repeat the previous turn's raises `RunStopped` ("loop"). Both end
    the run (the callback errors propagate).
    """

    run_inline = True  # keep the event order of async runs; the handlers only append to lists
    raise_error = True  # a recording bug must fail the run, not leave a silently incomplete trace

    def __init__(self, max_turns: int | None = None, stop_loops: bool = False) -> None:
        self.max_turns, self.stop_loops = max_turns, stop_loops
        self.turns = 0
        self.steps: list[ModelStep | ToolStep | None] = []
        self.system_prompt: str | None = None
        self.tools: list[dict[str, Any]] = []
        self.teacher_model: str | None = None
        self.teacher_endpoint: str | None = None
        self._open: dict[UUID, tuple[int, float, Any]] = {}
        self._lock = threading.Lock()

    def on_chat_model_start(self, serialized: dict[str, Any] | None, messages: list[list[BaseMessage]], *,
                            run_id: UUID, invocation_params: dict[str, Any] | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        params, metadata = invocation_params or {}, metadata or {}
        inputs = messages[0]
        with self._lock:
            self.turns += 1
            if self.max_turns is not None and self.turns > self.max_turns:
                raise RunStopped("turn_limit", f"model turn {self.turns} of at most {self.max_turns}")
            if self.teacher_model is None:
                self.teacher_model = params.get("model") or params.get("model_name") or metadata.get("ls_model_name")
                init_kwargs = (serialized or {}).get("kwargs") or {}
                url = next((init_kwargs[f] for f in _ENDPOINT_FIELDS if isinstance(init_kwargs.get(f), str)), None)
                self.teacher_endpoint = _public_url(url) if url else None
            if self.system_prompt is None and inputs and isinstance(inputs[0], SystemMessage):
                self.system_prompt = inputs[0].text
            if not self.tools and params.get("tools"):
                self.tools = [convert_to_openai_tool(schema) for schema in params["tools"]]
            self._open[run_id] = (len(self.steps), time.perf_counter(), to_openai_messages(inputs))
            self.steps.append(None)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        end = time.perf_counter()
        with self._lock:
            if run_id not in self._open:  # a completion (non-chat) LLM: not a step of a chat agent
                return
            slot, start, inputs = self._open.pop(run_id)
        message = response.generations[0][0].message
        parsed = set(message.additional_kwargs.get(PARSED_FROM_TEXT, ()))
        usage = message.usage_metadata or {}
        self.steps[slot] = ModelStep(
            input_messages=inputs,
            output=_to_openai(message),
            tool_calls=[
                ToolCall(id=call["id"], name=call["name"], args=call["args"], parsed_from_text=call["id"] in parsed)
                for call in message.tool_calls
            ],
            latency_s=end - start,
            usage=Usage(input_tokens=usage.get("input_tokens", 0), output_tokens=usage.get("output_tokens", 0)),
        )
        calls = _calls_of(self.steps[slot])
        if self.stop_loops and calls and calls == self._previous_calls(slot):
            raise RunStopped("loop", f"model turn {self.turns} repeated the previous turn's tool calls {calls}")

    def _previous_calls(self, slot: int) -> list[tuple[str, str]] | None:
        previous = [step for step in self.steps[:slot] if isinstance(step, ModelStep)]
        return _calls_of(previous[-1]) if previous else None

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._open.pop(run_id, None)

    def on_tool_start(self, serialized: dict[str, Any] | None, input_str: str, *, run_id: UUID,
                      inputs: dict[str, Any] | None = None, tool_call_id: str | None = None, **kwargs: Any) -> None:
        name = (serialized or {}).get("name") or kwargs.get("name") or "unknown"
        with self._lock:
            requested = {call.id: call.args for step in self.steps if isinstance(step, ModelStep)
                         for call in step.tool_calls}
            # The model's arguments, not the tool's inputs: ToolNode may inject state or runtime objects there.
            args = requested[tool_call_id] if tool_call_id in requested else inputs or {"input": input_str}
            self._open[run_id] = (len(self.steps), time.perf_counter(), (tool_call_id, name, args))
            self.steps.append(None)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        error = isinstance(output, ToolMessage) and output.status == "error"
        content = output.content if isinstance(output, ToolMessage) else output
        self._close_tool(run_id, content_text(content), error)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close_tool(run_id, f"{type(error).__name__}: {error}", True)

    def _close_tool(self, run_id: UUID, result: str, error: bool) -> None:
        end = time.perf_counter()
        with self._lock:
            slot, start, (call_id, name, args) = self._open.pop(run_id)
        self.steps[slot] = ToolStep(call_id=call_id or "", name=name, args=args, result=result, error=error,
                                    latency_s=end - start)

    def to_trace(self, task: Task, state: Any = None, *, sample: int = 0, started_at: float | None = None,
                 duration_s: float = 0.0, error: str | None = None, environment_state: Any = None,
                 stopped: str | None = None) -> Trace:
        """The `Trace` of this run on ``task``; ``state`` is the graph's latest state (None before its first),
        ``environment_state`` the run's environment state, which a task verifier taking ``state`` is given."""
        steps = [step for step in self.steps if step is not None]
        messages = state.get("messages", []) if isinstance(state, dict) else []
        steps = _reconcile_tool_steps(steps, messages)
        final_answer = None
        if messages and isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls:
            final_answer = messages[-1].text
        usage = sum((step.usage for step in steps if isinstance(step, ModelStep)), Usage())
        return Trace(
            task_id=task.id,
            sample=sample,
            task_input=task.input,
            ground_truth=task.ground_truth,
            verifier="custom" if is_custom(task.verifier) else task.verifier,
            system_prompt=self.system_prompt,
            tools=self.tools,
            steps=steps,
            final_answer=final_answer,
            teacher_model=self.teacher_model,
            teacher_endpoint=self.teacher_endpoint,
            verdict="unknown" if error is not None else task.verdict(final_answer, environment_state),
            started_at=time.time() if started_at is None else started_at,
            duration_s=duration_s,
            usage=usage,
            error=error,
            stopped=stopped,
        )


def _calls_of(step: ModelStep) -> list[tuple[str, str]]:
    return [(call.name, json.dumps(call.args, sort_keys=True, default=str)) for call in step.tool_calls]


def _reconcile_tool_steps(steps: list[ModelStep | ToolStep], messages: list[Any]) -> list[Any]:
    """Tool results as the agent saw them in the final state, including those no tool produced (ToolNode answers a
    call to an unknown tool itself)."""
    executed = {step.call_id for step in steps if isinstance(step, ToolStep)}
    results = {m.tool_call_id: m for m in messages if isinstance(m, ToolMessage)}
    out: list[ModelStep | ToolStep] = []
    pending: list[ToolStep] = []
    for step in steps:
        if isinstance(step, ToolStep) and step.call_id in results:
            # What the agent was shown: ToolNode may have turned a raised error into its own message.
            seen = results[step.call_id]
            step = step.model_copy(update={"result": content_text(seen.content),
                                           "error": step.error or seen.status == "error"})
        if isinstance(step, ModelStep):
            out += pending
            pending = [
                ToolStep(call_id=call.id, name=call.name, args=call.args, result=content_text(results[call.id].content),
                         error=results[call.id].status == "error")
                for call in step.tool_calls if call.id not in executed and call.id in results
            ]
        out.append(step)
    return out + pending


# ------------------------------------------------------------------------------------------------------ recording


def _as_tasks(tasks: Sequence[Task | str]) -> list[Task]:
    out = [t if isinstance(t, Task) else Task(id="task-" + hashlib.sha256(t.encode()).hexdigest()[:12], input=t)
           for t in tasks]
    seen: set[str] = set()
    for task in out:
        if task.id in seen:
            raise ValueError(f"task id {task.id!r} appears more than once in tasks")
        seen.add(task.id)
    return out


@dataclass(frozen=True)
class Bounds:
    """How one run is bounded: its time limit, retries of failed attempts (for teacher endpoints: 0 for a student,
    whose timeouts are then recorded as they are; a run that hit the turn cap or looped is never retried), the
    model-turn cap and the loop stop."""

    timeout_s: float = 300
    retries: int = 3
    backoff_s: float = 1.0
    max_turns: int | None = None
    stop_loops: bool = False


async def _stream_states(agent: Any, user_input: str, recorder: TraceRecorder, latest: list[Any]) -> None:
    """Runs ``agent`` on ``user_input``, keeping its latest state in ``latest[0]``: a run stopped midway keeps the
    tool results it was shown (ToolNode's answer to a call of an unknown tool is in no tool callback)."""
    async for latest[0] in agent.astream({"messages": [("user", user_input)]}, config={"callbacks": [recorder]},
                                         stream_mode="values"):
        pass


async def _run_one(environment: EnvironmentFactory, task: Task, sample: int, bounds: Bounds) -> Trace:
    attempt = 0
    while True:
        recorder = TraceRecorder(bounds.max_turns, bounds.stop_loops)
        started_at, start = time.time(), time.perf_counter()
        latest: list[Any] = [None]
        env = await asyncio.to_thread(environment)
        try:
            await asyncio.wait_for(_stream_states(env.agent, task.input, recorder, latest), bounds.timeout_s)
        except Exception as e:
            message = f"no result within {bounds.timeout_s} s" if isinstance(e, TimeoutError) else str(e)
            stopped = e.reason if isinstance(e, RunStopped) else "timeout" if isinstance(e, TimeoutError) else None
            # A stop or a recursion limit is the agent looping: retrying would loop again.
            if attempt < bounds.retries and not isinstance(e, (RunStopped, GraphRecursionError)):
                await asyncio.sleep(bounds.backoff_s * 2**attempt)
                attempt += 1
                continue
            trace = recorder.to_trace(task, latest[0], sample=sample, started_at=started_at,
                                      duration_s=time.perf_counter() - start,
                                      error=f"{type(e).__name__}: {message}", stopped=stopped)
        else:
            # The verdict is taken on this run's environment, before it is closed.
            trace = recorder.to_trace(task, latest[0], sample=sample, started_at=started_at,
                                      duration_s=time.perf_counter() - start, environment_state=env.state)
        finally:
            if env.close is not None:
                await asyncio.to_thread(env.close)
        trace.metadata["attempts"] = attempt + 1
        return trace


async def arecord(agent: Any, tasks: Sequence[Task | str], store: TraceStore | str, *,
                  environment: EnvironmentFactory | None = None, concurrency: int = 4, timeout_s: float = 300,
                  retries: int = 3, backoff_s: float = 1.0, samples: int = 1, max_turns: int | None = None,
                  stop_loops: bool = False, redact: Callable[[Trace], Trace] | None = None, progress: bool = True,
                  retry_failed: bool = False, tool_timeout_s: float | None = None) -> list[Trace]:
    """The async form of `record`, for callers already inside an event loop. Synchronous chat models and tools run
    on that loop's default thread pool, which caps the runs at once at its size (`record` sizes it to
    ``concurrency``)."""
    if concurrency < 1 or samples < 1 or retries < 0 or timeout_s <= 0:
        raise ValueError(f"need concurrency >= 1, samples >= 1, retries >= 0 and timeout_s > 0; got "
                         f"concurrency={concurrency}, samples={samples}, retries={retries}, timeout_s={timeout_s}")
    store = store if isinstance(store, TraceStore) else TraceStore(store)
    tasks = _as_tasks(tasks)
    if environment is None:
        shared = agent if tool_timeout_s is None else with_tool_timeout(agent, tool_timeout_s)
        environment = lambda: Environment(shared)  # noqa: E731
    elif tool_timeout_s is not None:
        environment = map_agent(environment, lambda graph: with_tool_timeout(graph, tool_timeout_s))
    bounds = Bounds(timeout_s, retries, backoff_s, max_turns, stop_loops)
    stored = store.runs()
    if retry_failed:
        stored = {key: trace for key, trace in stored.items() if trace.error is None}
    keys = [(task, sample) for task in tasks for sample in range(samples)]
    todo = [(task, sample) for task, sample in keys if (task.id, sample) not in stored]
    semaphore = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(keys), initial=len(keys) - len(todo), desc="recording", unit="run", disable=not progress)

    async def one(task: Task, sample: int) -> None:
        async with semaphore:
            trace = await _run_one(environment, task, sample, bounds)
        if redact is not None:
            trace = redact(trace)
        store.append(trace)
        stored[trace.key] = trace
        bar.update(1)

    try:
        await asyncio.gather(*(one(task, sample) for task, sample in todo))
    finally:
        bar.close()
    return [stored[(task.id, sample)] for task, sample in keys]


def record(agent: Any, tasks: Sequence[Task | str], store: TraceStore | str, *,
           environment: EnvironmentFactory | None = None, concurrency: int = 4, timeout_s: float = 300,
           retries: int = 3, backoff_s: float = 1.0, samples: int = 1, max_turns: int | None = None,
           stop_loops: bool = False, redact: Callable[[Trace], Trace] | None = None, progress: bool = True,
           retry_failed: bool = False, tool_timeout_s: float | None = None) -> list[Trace]:
    """Run the compiled graph ``agent`` on every task ``samples`` times and append one `Trace` per run to ``store``.

    With ``environment`` (a `mentor_agents.environment.EnvironmentFactory`), every run builds its own
    `Environment` and runs its agent instead (``agent`` may then be None); a task verifier that takes ``state``
    judges the answer with that run's ``Environment.state``, and the environment is closed after the verdict.

    Runs already in the store are skipped (resume after a crash or kill); with ``retry_failed=True`` failed ones run
    again. Up to ``concurrency`` runs go at once (``agent.ainvoke``); each attempt gets ``timeout_s`` seconds, and a
    failed attempt is retried ``retries`` times after ``backoff_s * 2**attempt`` seconds (each attempt in a fresh
    environment). ``max_turns`` caps the model turns of a run, and ``stop_loops`` ends a run whose model repeats
    its previous turn's tool calls exactly; such runs are not retried, and their trace says why in ``stopped``
    (``"turn_limit"``, ``"loop"``, or ``"timeout"`` for a run out of time). A run that still fails is
    stored as a trace with ``error`` set and verdict ``unknown``. Each trace is passed through ``redact`` and written
    (fsynced) as soon as it is done. ``tasks`` may be plain strings (ids from a hash of the text). With
    ``tool_timeout_s``, a tool call running longer is answered with an error tool message (`with_tool_timeout`).

    Returns the traces of all the requested runs, stored earlier or now, in task order.
    A synchronous-only chat model runs in a worker thread: a timeout abandons such a call but cannot stop it.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("record() was called inside a running event loop; use `await arecord(...)` there")

    async def main() -> list[Trace]:
        # Synchronous chat models and tools run on the loop's default thread pool, whose min(32, CPUs + 4) threads
        # would hold the runs at once below ``concurrency`` (6 on a 2-core machine).
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max(concurrency, min(32, (os.cpu_count() or 1) + 4))))
        return await arecord(agent, tasks, store, environment=environment, concurrency=concurrency,
                             timeout_s=timeout_s, retries=retries, backoff_s=backoff_s, samples=samples,
                             max_turns=max_turns, stop_loops=stop_loops, redact=redact, progress=progress,
                             retry_failed=retry_failed, tool_timeout_s=tool_timeout_s)

    return asyncio.run(main())
