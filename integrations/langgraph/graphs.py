"""Rebuilding a compiled LangGraph graph around new node runnables, for swapping models and wrapping tools."""

from __future__ import annotations

import copy
from typing import Any


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
