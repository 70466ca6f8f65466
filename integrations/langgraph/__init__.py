"""LangGraph integration: record a graph's runs as teacher traces, and put a student model into the same graph.

Recording and swapping import no torch; the student chat model (`StudentChatModel`, `TokenRecorder`,
`rollout_from_run`) loads torch and transformers on first access.
"""

from typing import Any

from mentor_agents.integrations.langgraph.graphs import swap_model
from mentor_agents.integrations.langgraph.recording import TraceRecorder, arecord, record, to_openai_messages
from mentor_agents.integrations.langgraph.safety import with_tool_timeout

__all__ = ["StudentChatModel", "TokenRecorder", "TraceRecorder", "arecord", "record", "rollout_from_run",
           "swap_model", "to_openai_messages", "with_tool_timeout"]


def __getattr__(name: str) -> Any:
    if name in ("StudentChatModel", "TokenRecorder", "rollout_from_run"):
        from mentor_agents.integrations.langgraph import student_model

        return getattr(student_model, name)
    raise AttributeError(f"module 'mentor_agents.integrations.langgraph' has no attribute {name!r}")
