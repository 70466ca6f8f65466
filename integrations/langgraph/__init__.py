"""LangGraph integration: record a graph's runs as teacher traces."""

from mentor_agents.integrations.langgraph.recording import TraceRecorder, arecord, record, to_openai_messages
from mentor_agents.integrations.langgraph.safety import with_tool_timeout
from mentor_agents.integrations.langgraph.student_model import (
    StudentChatModel,
    TokenRecorder,
    rollout_from_run,
    swap_model,
)
