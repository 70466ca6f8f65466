"""mentor_agents: distill a tool-calling agent into a small student model with the MENTOR teacher-guided reward."""

from mentor_agents.references import RewardReference, build_references, summarize
from mentor_agents.rewards import RewardResult, TeacherGuidedReward
from mentor_agents.rollouts import Rollout
from mentor_agents.tasks import ExactMatch, NumericMatch, Task
from mentor_agents.traces import ModelStep, ToolCall, ToolStep, Trace, TraceFileError, TraceStore

__all__ = [
    "ExactMatch",
    "ModelStep",
    "NumericMatch",
    "RewardReference",
    "RewardResult",
    "Rollout",
    "Task",
    "TeacherGuidedReward",
    "ToolCall",
    "ToolStep",
    "Trace",
    "TraceFileError",
    "TraceStore",
    "build_references",
    "summarize",
]
