"""Rebuilding a compiled LangGraph graph around new node runnables: swapping its chat model, wrapping its tools."""

from __future__ import annotations

import copy
import dataclasses
import types
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable, RunnableBinding, RunnableSequence


def recompile(graph: Any, nodes: dict[str, Any]) -> Any:
    """``graph`` compiled again with ``nodes`` (node specs by name) and the same checkpointer, store, interrupts, name
    and bound config (``graph.with_config(recursion_limit=...)``); ``graph`` itself is unchanged."""
    new_builder = copy.copy(graph.builder)
    new_builder.nodes = nodes
    compiled = new_builder.compile(
        checkpointer=graph.checkpointer, store=graph.store, cache=graph.cache,
        interrupt_before=graph.interrupt_before_nodes, interrupt_after=graph.interrupt_after_nodes,
        debug=graph.debug, name=graph.name, transformers=getattr(graph, "stream_transformers", None),
    )
    return compiled.with_config(graph.config) if graph.config else compiled


def swap_model(graph: Any, chat_model: BaseChatModel) -> Any:
    """A new compiled graph with ``chat_model`` in place of every chat model in ``graph``; ``graph`` is unchanged.

    Works on any compiled ``StateGraph`` (``langchain.agents.create_agent``, ``create_react_agent``, hand-built
    graphs, and subgraphs used as nodes): the chat models referenced by node runnables, their tool bindings, and the
    closures and default arguments of node functions are replaced, and the graph is compiled again with the same
    checkpointer, store, interrupts and name. Tools bound to the old model are bound to the new one with the same
    schemas and ``tool_choice``.
    """
    builder = getattr(graph, "builder", None)
    if builder is None or not hasattr(builder, "nodes"):
        raise TypeError(f"swap_model needs a compiled LangGraph StateGraph, got {type(graph).__name__}")
    swapper = _Swapper(chat_model)
    new_graph = swapper.graph(graph)
    if new_graph is graph:
        raise ValueError(
            "swap_model found no chat model in the graph's nodes (looked in node runnables, tool bindings, closures "
            "and default arguments of node functions, and subgraphs); a model held elsewhere, such as a module "
            "global or an object attribute, cannot be replaced"
        )
    return new_graph


class _Swapper:
    def __init__(self, chat_model: BaseChatModel) -> None:
        self.chat_model = chat_model
        self.memo: dict[int, Any] = {}
        self.busy: set[int] = set()

    def graph(self, graph: Any) -> Any:
        builder = graph.builder
        nodes = {}
        for name, spec in builder.nodes.items():
            runnable = self.swap(spec.runnable)
            nodes[name] = spec if runnable is spec.runnable else dataclasses.replace(spec, runnable=runnable)
        if all(nodes[name] is spec for name, spec in builder.nodes.items()):
            return graph
        return recompile(graph, nodes)

    def swap(self, value: Any) -> Any:
        """``value`` with the chat model replaced, or ``value`` itself when it holds no chat model."""
        key = id(value)
        if key in self.memo:
            return self.memo[key]
        if key in self.busy:  # a closure that refers to itself
            return value
        self.busy.add(key)
        try:
            new = self._swap(value)
        finally:
            self.busy.discard(key)
        self.memo[key] = new
        return new

    def _swap(self, value: Any) -> Any:
        if isinstance(value, BaseChatModel):
            return self.chat_model
        if isinstance(value, RunnableBinding):
            bound = self.swap(value.bound)
            if bound is value.bound:
                return value
            if isinstance(value.bound, BaseChatModel) and "tools" in value.kwargs:
                kwargs = dict(value.kwargs)
                rebound = self.chat_model.bind_tools(kwargs.pop("tools"), tool_choice=kwargs.pop("tool_choice", None))
                rebound = rebound.bind(**kwargs) if kwargs else rebound
                return rebound.with_config(value.config) if value.config else rebound
            return value.model_copy(update={"bound": bound})
        if isinstance(value, RunnableSequence):
            steps = [self.swap(step) for step in value.steps]
            if all(a is b for a, b in zip(steps, value.steps)):
                return value
            return value.model_copy(update={"first": steps[0], "middle": steps[1:-1], "last": steps[-1]})
        if hasattr(value, "builder") and hasattr(value, "attach_node"):  # a compiled subgraph
            return self.graph(value)
        if isinstance(value, Runnable) and hasattr(value, "func"):  # RunnableLambda, langgraph's RunnableCallable
            func, afunc = self.swap(value.func), self.swap(getattr(value, "afunc", None))
            if func is value.func and afunc is getattr(value, "afunc", None):
                return value
            new = copy.copy(value)
            new.func = func
            if afunc is not None:
                new.afunc = afunc
            return new
        if isinstance(value, types.FunctionType):
            return self._function(value)
        if isinstance(value, (list, tuple)):
            items = [self.swap(v) for v in value]
            return value if all(a is b for a, b in zip(items, value)) else type(value)(items)
        if isinstance(value, dict):
            items = {k: self.swap(v) for k, v in value.items()}
            return value if all(items[k] is v for k, v in value.items()) else items
        return value

    def _function(self, fn: types.FunctionType) -> types.FunctionType:
        cells = fn.__closure__ or ()
        contents = [self.swap(_cell_value(c)) for c in cells]
        defaults = self.swap(fn.__defaults__) if fn.__defaults__ else fn.__defaults__
        kwdefaults = self.swap(fn.__kwdefaults__) if fn.__kwdefaults__ else fn.__kwdefaults__
        if (all(new is _cell_value(c) for new, c in zip(contents, cells)) and defaults is fn.__defaults__
                and kwdefaults is fn.__kwdefaults__):
            return fn
        closure = tuple(c if new is _cell_value(c) else types.CellType(new) for new, c in zip(contents, cells))
        new_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, defaults, closure or None)
        new_fn.__kwdefaults__ = kwdefaults
        new_fn.__dict__.update(fn.__dict__)
        new_fn.__qualname__, new_fn.__module__, new_fn.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
        new_fn.__annotations__ = fn.__annotations__
        return new_fn


_EMPTY = object()


def _cell_value(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an unfilled cell (a name defined later in the enclosing function)
        return _EMPTY
