"""The OpenAI-compatible side: a chat-completions server for any LangChain chat model, any OpenAI-compatible
endpoint as the teacher, and a recording proxy."""

from mentor_agents.integrations.openai.proxy import create_proxy_app
from mentor_agents.integrations.openai.server import create_app, running_server, serve, serve_student
from mentor_agents.integrations.openai.teacher import LenientChatOpenAI, OpenAITeacher, promote_text_calls

__all__ = ["LenientChatOpenAI", "OpenAITeacher", "create_app", "create_proxy_app", "promote_text_calls",
           "running_server", "serve", "serve_student"]
