"""Forced generation for tests that need a real student's real ``generate`` to emit a known text."""

import torch
from transformers import LogitsProcessor


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
