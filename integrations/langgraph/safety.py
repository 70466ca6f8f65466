"""Per-tool timeouts for a compiled LangGraph graph.

```python
agent = with_tool_timeout(create_agent(model, tools), seconds=10)
```

A tool call that runs longer than ``seconds`` is answered with an error tool message (``status="error"``) that the
model sees, instead of blocking the run. Python cannot stop a running thread: a synchronous tool that hangs keeps
its worker thread until it returns, but the agent no longer waits for it.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import threading
from typing import Any

from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from langgraph.prebuilt import ToolNode

from mentor_agents.integrations.langgraph.graphs import recompile


def with_tool_timeout(graph: Any, seconds: float) -> Any:
    """A copy of the compiled graph ``graph`` whose tool nodes give every tool call at most ``seconds`` seconds;
    ``graph`` is unchanged. Raises ``ValueError`` when the graph has no `ToolNode`."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    builder = getattr(graph, "builder", None)
    if builder is None or not hasattr(builder, "nodes"):
        raise TypeError(f"with_tool_timeout needs a compiled LangGraph StateGraph, got {type(graph).__name__}")
    nodes = {name: dataclasses.replace(spec, runnable=timed_tool_node(spec.runnable, seconds))
             if isinstance(spec.runnable, ToolNode) else spec for name, spec in builder.nodes.items()}
    if all(nodes[name] is spec for name, spec in builder.nodes.items()):
        raise ValueError("with_tool_timeout found no ToolNode in the graph's nodes")
    return recompile(graph, nodes)


def timed_tool_node(node: ToolNode, seconds: float) -> ToolNode:
    """A new `ToolNode` with ``node``'s tools and settings whose tool calls time out after ``seconds``; an existing
    ``wrap_tool_call`` (e.g. agent middleware) runs inside the timeout."""
    inner, ainner = node._wrap_tool_call, node._awrap_tool_call

    def wrap(request: Any, execute: Any) -> ToolMessage | Any:
        done: list[Any] = []
        context = contextvars.copy_context()  # callbacks and config travel in context variables

        def run() -> None:
            try:
                done.append(("ok", inner(request, execute) if inner else execute(request)))
            except BaseException as e:  # handed back to the caller's thread below
                done.append(("error", e))

        # A daemon thread, not an executor: a hung tool must not keep the interpreter from exiting.
        worker = threading.Thread(target=context.run, args=(run,), daemon=True, name="mentor-tool")
        worker.start()
        worker.join(seconds)
        if not done:
            return timeout_message(request, seconds)
        kind, value = done[0]
        if kind == "error":
            raise value
        return value

    async def awrap(request: Any, execute: Any) -> ToolMessage | Any:
        call = ainner(request, execute) if ainner else execute(request)
        if not _native_async(request.tool):
            # A sync tool would run in the loop's default executor, which asyncio.run waits for on exit; a hung one
            # would then hang the caller anyway. Give it a daemon thread with its own loop instead.
            call = _in_daemon_thread(call)
        try:
            return await asyncio.wait_for(call, seconds)
        except TimeoutError:
            return timeout_message(request, seconds)

    # With only a sync wrapper, ToolNode runs it (and so this timeout) on async calls too.
    return ToolNode(list(node.tools_by_name.values()), name=node.name, tags=node.tags,
                    handle_tool_errors=node._handle_tool_errors, messages_key=node._messages_key,
                    wrap_tool_call=wrap, awrap_tool_call=awrap if ainner or not inner else None)


def timeout_message(request: Any, seconds: float) -> ToolMessage:
    call = request.tool_call
    return ToolMessage(content=f"Error: ToolException: tool {call['name']!r} did not finish within {seconds} s",
                       name=call["name"], tool_call_id=call["id"], status="error")



def _native_async(tool: Any) -> bool:
    if tool is None:  # an unknown tool: ToolNode answers it without running anything
        return True
    if hasattr(tool, "coroutine"):
        return tool.coroutine is not None
    return type(tool)._arun is not BaseTool._arun


async def _in_daemon_thread(coroutine: Any) -> Any:
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def run() -> None:
        try:
            outcome = (asyncio.run(coroutine), None)
        except BaseException as e:  # handed back to the caller's loop
            outcome = (None, e)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the caller's loop is gone: nobody waits for this result any more
            pass

    threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True, name="mentor-tool").start()
    return await future
