"""LangGraph integration: record a graph's runs as teacher traces."""

from mentor_agents.integrations.langgraph.recording import TraceRecorder, arecord, record, to_openai_messages
