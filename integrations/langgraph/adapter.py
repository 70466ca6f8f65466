"""What `mentor_agents.distill` needs from a LangGraph agent: its teacher model, tools and system prompt, recording,
task synthesis, GRPO rollouts through the graph, and the student as a chat model swapped into the graph."""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any, Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.prebuilt import ToolNode

from mentor_agents.environment import Environment, EnvironmentFactory, map_agent
from mentor_agents.errors import InvalidInputError, StageError
from mentor_agents.integrations.langgraph.graphs import _Swapper, swap_model
from mentor_agents.integrations.langgraph.recording import record
from mentor_agents.tasks import Task
from mentor_agents.traces import Trace, TraceStore
from mentor_agents.rollouts import RolloutFn

if TYPE_CHECKING:  # the student chat model loads torch; recording through this adapter does not
    from mentor_agents.integrations.langgraph.student_model import StudentChatModel

SYNTHESIS_REQUEST = "Write {count} new, varied user requests"
"""How a task-synthesis prompt starts; a scripted teacher recognises it by this phrase."""


def is_langgraph_agent(agent: Any) -> bool:
    builder = getattr(agent, "builder", None)
    return builder is not None and hasattr(builder, "nodes") and hasattr(agent, "invoke")


class _Inspector(_Swapper):
    """Walks the graph the way `swap_model` does, collecting chat models and system messages instead."""

    def __init__(self) -> None:
        super().__init__(chat_model=None)  # type: ignore[arg-type]
        self.chat_models: list[BaseChatModel] = []
        self.system_messages: list[str] = []

    def _swap(self, value: Any) -> Any:
        if isinstance(value, BaseChatModel):
            self.chat_models.append(value)
            return value
        if isinstance(value, SystemMessage) and isinstance(value.content, str):
            self.system_messages.append(value.content)
            return value
        return super()._swap(value)


class LangGraphAdapter:
    """Runs a compiled LangGraph graph for `distill`. With ``environment``, every run (recording, rollout,
    evaluation) runs the graph of a fresh `Environment` from that factory; ``agent`` is then only inspected (tools,
    system prompt, model)."""

    def __init__(self, agent: Any, environment: EnvironmentFactory | None = None):
        self.agent, self.environment = agent, environment
        inspector = _Inspector()
        for spec in agent.builder.nodes.values():
            inspector.swap(spec.runnable)
        self.chat_models = inspector.chat_models
        self.system_prompt = inspector.system_messages[0] if inspector.system_messages else None
        self.tools = [
            convert_to_openai_tool(tool)
            for spec in agent.builder.nodes.values() if isinstance(spec.runnable, ToolNode)
            for tool in spec.runnable.tools_by_name.values()
        ]

    def teacher_model(self, teacher: Any) -> BaseChatModel | None:
        """``teacher`` as a chat model: a chat model as is, an `OpenAITeacher` through its ``chat_model()``, or None
        for the agent's own model."""
        if teacher is None or isinstance(teacher, BaseChatModel):
            return teacher
        if hasattr(teacher, "chat_model"):
            return teacher.chat_model()
        raise TypeError(f"teacher must be a LangChain chat model or an OpenAITeacher, got {type(teacher).__name__}")

    def graph_for(self, model: BaseChatModel | None) -> Any:
        return self.agent if model is None else swap_model(self.agent, model)

    def environment_for(self, model: BaseChatModel | None) -> EnvironmentFactory:
        """A factory of run environments whose graph runs on ``model`` (None: the graph's own model)."""
        if self.environment is None:
            graph = self.graph_for(model)
            return lambda: Environment(graph)
        return self.environment if model is None else map_agent(self.environment, lambda g: swap_model(g, model))

    def record(self, tasks: Sequence[Task], store: TraceStore, *, model: BaseChatModel | None = None,
               samples: int = 1, concurrency: int = 4, timeout_s: float = 300, retries: int = 3,
               max_turns: int | None = None, stop_loops: bool = False) -> list[Trace]:
        return record(None, list(tasks), store, environment=self.environment_for(model), samples=samples,
                      concurrency=concurrency, timeout_s=timeout_s, retries=retries, max_turns=max_turns,
                      stop_loops=stop_loops)

    def synthesize_tasks(self, n: int, *, model: BaseChatModel | None = None, seed: int = 0,
                         batch: int = 16, max_rounds: int | None = None) -> list[Task]:
        """``n`` distinct user requests written by the teacher from the agent's tools and system prompt.

        The teacher is asked for ``batch`` requests at a time, each round with its own seed; requests already seen
        (ignoring case and spacing) are dropped. Tasks have no verifier: `distill` judges them by self-consistency.
        """
        writer = model or (self.chat_models[0] if self.chat_models else None)
        if writer is None:
            raise InvalidInputError("the agent has no chat model to write tasks with; pass tasks or a teacher")
        tools = "\n".join(
            f"- {t['function']['name']}({', '.join(t['function'].get('parameters', {}).get('properties', {}))}): "
            f"{t['function'].get('description', '')}" for t in self.tools
        )
        seen: dict[str, Task] = {}
        for round_ in range(max_rounds or max(3, 3 * n // batch + 3)):
            prompt = (
                f"{SYNTHESIS_REQUEST.format(count=batch)} that this AI agent can complete with its tools. "
                "Each request must be self-contained, with every value it needs. Write one request per line, "
                "numbered '1.', '2.', ...; no other text.\n\n"
                f"The agent's instructions:\n{self.system_prompt or '(none)'}\n\nIts tools:\n{tools}\n\n"
                f"Variation seed: {seed}-{round_}"
            )
            reply = writer.invoke([SystemMessage("You write realistic requests that users send to an AI agent."),
                                   HumanMessage(prompt)])
            for line in str(reply.content).splitlines():
                m = re.match(r"\s*\d+[.)]\s*(.+\S)", line)
                if not m:
                    continue
                text = m.group(1).strip()
                key = " ".join(text.casefold().split())
                if key not in seen:
                    seen[key] = Task(id="synth-" + hashlib.sha256(key.encode()).hexdigest()[:12], input=text,
                                     metadata={"synthesized": True, "seed": seed})
            if len(seen) >= n:
                break
        if not seen:
            raise StageError(f"the teacher wrote no parseable requests; its last reply was: {reply.content!r:.300}")
        return list(seen.values())[:n]

    def rollout_fn(self) -> RolloutFn:
        from mentor_agents.integrations.langgraph.rollouts import graph_rollout_fn

        return graph_rollout_fn(self.agent, self.environment)

    def student_model(self, model: Any, tokenizer: Any, **generation: Any) -> StudentChatModel:
        from mentor_agents.integrations.langgraph.student_model import StudentChatModel

        return StudentChatModel(model=model, tokenizer=tokenizer, **generation)

    def swap(self, chat_model: BaseChatModel, graph: Any = None) -> Any:
        return swap_model(graph if graph is not None else self.agent, chat_model)

