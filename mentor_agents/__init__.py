"""mentor_agents: distill a tool-calling agent into a small student model with the MENTOR teacher-guided reward.

``from mentor_agents import distill, DistillConfig, TrainConfig`` is the one-call pipeline and its settings.
`distill` is imported here (its module loads torch only when it runs); `TrainConfig` lives in
`mentor_agents.training`, which imports torch, transformers and trl, so it is loaded on first access: importing
the package (e.g. for `TraceStore` in a proxy) stays light.
"""

from typing import Any

from mentor_agents.distill import DistillConfig, distill
from mentor_agents.environment import Environment, EnvironmentFactory
from mentor_agents.errors import InvalidInputError, MentorError, StageError
from mentor_agents.messages import Message, ToolCall
from mentor_agents.references import RewardReference, build_references, summarize
from mentor_agents.rewards import Reward, RewardResult
from mentor_agents.rollouts import Rollout
from mentor_agents.tasks import ExactMatch, NumericMatch, Task
from mentor_agents.traces import ModelStep, RecordFileError, ToolStep, Trace, TraceStore

__all__ = [
    "DistillConfig",
    "Environment",
    "EnvironmentFactory",
    "ExactMatch",
    "InvalidInputError",
    "MentorError",
    "Message",
    "ModelStep",
    "NumericMatch",
    "RecordFileError",
    "Reward",
    "RewardReference",
    "RewardResult",
    "Rollout",
    "StageError",
    "Task",
    "ToolCall",
    "ToolStep",
    "Trace",
    "TraceStore",
    "TrainConfig",
    "build_references",
    "distill",
    "summarize",
]


def __getattr__(name: str) -> Any:
    if name == "TrainConfig":
        from mentor_agents.training import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'mentor_agents' has no attribute {name!r}")
