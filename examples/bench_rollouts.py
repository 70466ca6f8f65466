"""Benchmark: what reusing the KV cache saves in multi-turn GRPO rollouts through the real calculator agent.

    OMP_NUM_THREADS=1 python examples/bench_rollouts.py [--students tiny smollm2-135m] [--rollouts 4] [--turns 3]

`run_rollouts` runs ``--rollouts`` rollouts of the 12-tool calculator agent (`build_agent`, about 1,200 prompt
tokens) as one GRPO step does, once with ``reuse_kv=False`` (every turn prefills its whole prompt) and once with the
KV reuse (the shared prompt prefilled once, each rollout's cache kept across its turns). A small random model rarely
calls a tool, so a logits processor writes the first ``turns - 1`` turns as tool calls (the graph runs the real tools
and feeds their results back); the last turn is the model's own greedy text, up to ``--new-tokens``. Every token
still comes out of a full forward pass, so prefill and decode cost what they cost in training. Reports process CPU
seconds (the machine is shared, wall clock swings), wall seconds, the tokens that went through the model's embedding
(prefill plus decode), and whether both paths produced the same tokens. Writes examples/results/bench_rollouts.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent, make_tasks
from mentor_agents.integrations.langgraph.rollouts import run_rollouts
from mentor_agents.references import RewardReference
from mentor_agents.student import find_packaged_gguf, load_student
from mentor_agents.training import TrainConfig

CALLS = ['<tool_call>\n{"name": "add", "arguments": {"a": 17, "b": 23}}\n</tool_call>',
         '<tool_call>\n{"name": "multiply", "arguments": {"a": 40, "b": 9}}\n</tool_call>']


class ScriptedCalls(LogitsProcessor):
    """Turn k < len(calls) of a row is ``calls[k]`` then the end token; later turns are greedy. The turn of a row is
    the number of tool results in its prompt."""

    def __init__(self, tokenizer, calls: list[str], end_token: str = "<|im_end|>") -> None:
        self.scripts = [tokenizer.encode(text) + [tokenizer.convert_tokens_to_ids(end_token)] for text in calls]
        self.response = self.text(tokenizer.encode("<tool_response>"))
        self.header = self.text(tokenizer.encode("<|im_start|>assistant\n"))

    @staticmethod
    def text(ids: list[int]) -> str:
        """Token ids as " 1 2 3 ", so that substring search matches whole tokens."""
        return " " + " ".join(map(str, ids)) + " "

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        choice = scores.argmax(-1)
        for row, ids in enumerate(input_ids.tolist()):
            text = self.text(ids)
            turn = text.count(self.response)
            written = text[text.rfind(self.header) + len(self.header):].count(" ")
            if turn < len(self.scripts):
                choice[row] = self.scripts[turn][min(written, len(self.scripts[turn]) - 1)]
        forced = torch.full_like(scores, float("-inf"))
        forced[torch.arange(len(choice)), choice] = 0.0
        return forced


def load(name: str):
    if name == "tiny":
        return load_student("tiny")
    if name == "smollm2-135m":
        return load_student(find_packaged_gguf("smollm2-135m-instruct"))
    raise SystemExit(f"unknown student {name!r}; expected tiny or smollm2-135m")


def measure(model, tokenizer, references, config: TrainConfig, reuse_kv: bool) -> tuple[dict, list]:
    embedded = [0]
    hook = model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: embedded.__setitem__(0, embedded[0] + inputs[0].numel()))
    processor = LogitsProcessorList([ScriptedCalls(tokenizer, CALLS[: config.max_turns - 1])])
    torch.manual_seed(0)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        rollouts = run_rollouts(build_agent(ScriptedCalculatorTeacher()), references, model, tokenizer, config,
                                reuse_kv=reuse_kv, logits_processor=processor)
    finally:
        hook.remove()
    row = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - start, "embedded_tokens": embedded[0],
           "turns": [r.turns for r in rollouts], "sampled_tokens": sum(sum(r.completion_mask) for r in rollouts),
           "prompt_tokens_first_turn": [len(r.prompt_ids) for r in rollouts],
           "prefill_fallbacks": [r.prefill_fallbacks for r in rollouts]}
    return row, rollouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", nargs="+", default=["tiny", "smollm2-135m"])
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_rollouts.json"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update({"machine": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "settings": {"rollouts": args.rollouts, "turns": args.turns, "new_tokens": args.new_tokens,
                                 "agent": "calculator, 12 tools", "calls": CALLS[: args.turns - 1]}})
    students = results.setdefault("students", {})
    tasks = make_tasks(args.rollouts, "train")
    references = [RewardReference(task_id=t.id, task_input=t.input, teacher_tools=[], teacher_calls=[],
                                  teacher_answer="") for t in tasks]
    config = TrainConfig(max_new_tokens=args.new_tokens, max_turns=args.turns)
    for name in args.students:
        model, tokenizer = load(name)
        model.eval()
        measure(model, tokenizer, references[:1], dataclasses.replace(config, max_turns=1), True)  # warm-up
        load_before = os.getloadavg()
        plain, plain_rollouts = measure(model, tokenizer, references, config, False)
        cached, cached_rollouts = measure(model, tokenizer, references, config, True)
        students[name] = {
            "uncached": plain, "cached": cached, "load_average": [load_before, os.getloadavg()],
            "cpu_speedup": plain["cpu_s"] / cached["cpu_s"], "wall_speedup": plain["wall_s"] / cached["wall_s"],
            "embedded_token_ratio": plain["embedded_tokens"] / cached["embedded_tokens"],
            "identical_tokens": all(a.completion_ids == b.completion_ids
                                    for a, b in zip(plain_rollouts, cached_rollouts)),
        }
        del model
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"{args.rollouts} rollouts x {args.turns} turns, {args.new_tokens} new tokens; "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s)\n")
    print("| student | KV reuse | CPU s | wall s | tokens through the model | sampled tokens | turns | same tokens |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for name, res in students.items():
        for mode in ("uncached", "cached"):
            row = res[mode]
            print(f"| {name} | {'on' if mode == 'cached' else 'off'} | {row['cpu_s']:.1f} | {row['wall_s']:.1f} | "
                  f"{row['embedded_tokens']} | {row['sampled_tokens']} | {row['turns']} | {res['identical_tokens']} |")
    for name, res in students.items():
        print(f"{name}: {res['cpu_speedup']:.2f}x less CPU, {res['wall_speedup']:.2f}x less wall, "
              f"{res['embedded_token_ratio']:.1f}x fewer tokens through the model")
    print("\nwrote", args.out)


if __name__ == "__main__":
    main()
