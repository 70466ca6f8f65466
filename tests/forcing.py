"""Forced generation for tests that need a real student's real ``generate`` to emit a known text, and the
calculator tasks it is forced on."""

import torch
from transformers import LogitsProcessor

from mentor_agents.demo.calculator import make_tasks
from mentor_agents.references import RewardReference

CALLS = ['<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 2}}\n</tool_call>',
         '<tool_call>\n{"name": "multiply", "arguments": {"a": 5, "b": 7}}\n</tool_call>']


class ForceText(LogitsProcessor):
    """Forces the generation to a fixed text: a tool call on the first turn, the answer once a tool result is in
    the prompt. Generation still runs through the model's real ``generate``."""

    def __init__(self, tokenizer, first: str, after_tool: str) -> None:
        end = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        self.targets = [tokenizer.encode(first) + end, tokenizer.encode(after_tool) + end]
        self.header = tokenizer.encode("<|im_start|>assistant\n")
        self.tokenizer = tokenizer

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids = input_ids[0].tolist()
        start = max(i for i in range(len(ids)) if ids[i:i + len(self.header)] == self.header) + len(self.header)
        seen_tool = "<tool_response>" in self.tokenizer.decode(ids[:start])
        target = self.targets[1 if seen_tool else 0]
        step = min(len(ids) - start, len(target) - 1)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, target[step]] = 0.0
        return forced


class ToolTurnsThenModel(LogitsProcessor):
    """Row by row: the first turns are forced to the tool calls ``calls`` (so the real graph runs real tools and
    comes back), later turns are the model's own choice, greedy (``greedy=True``) or sampled. The model's logits
    still give every recorded log-probability."""

    def __init__(self, tokenizer, calls: list[str], greedy: bool = True) -> None:
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.targets = [tokenizer.encode(c) + [end] for c in calls]
        self.header = tokenizer.encode("<|im_start|>assistant\n")
        self.greedy = greedy

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = scores.clone() if not self.greedy else torch.full_like(scores, float("-inf"))
        n = len(self.header)
        for row, ids in enumerate(input_ids.tolist()):
            starts = [i for i in range(len(ids) - n + 1) if ids[i:i + n] == self.header]
            turn, start = len(starts) - 1, starts[-1] + n
            if turn < len(self.targets):
                target = self.targets[turn]
                out[row] = float("-inf")
                out[row, target[min(len(ids) - start, len(target) - 1)]] = 0.0
            elif self.greedy:
                out[row, scores[row].argmax()] = 0.0
        return out


def references(n: int) -> list[RewardReference]:
    return [RewardReference(task_id=t.id, task_input=t.input, teacher_tools=[], teacher_calls=[], teacher_answer="")
            for t in make_tasks(n, "train")]
