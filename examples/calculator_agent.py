"""Record a teacher on the calculator agent, build MENTOR reward references from its traces, and summarise them.

    python examples/calculator_agent.py                          # scripted stand-in teacher, 50 train tasks
    python examples/calculator_agent.py --base-url http://127.0.0.1:8000/v1 --model my-teacher --api-key sk-...

Any OpenAI-compatible endpoint can be the teacher (through langchain_openai.ChatOpenAI). Rerunning resumes: tasks
already in the trace store are skipped.
"""

import argparse
import os
import time
from pathlib import Path

from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent, make_tasks
from mentor_agents.integrations.langgraph import record
from mentor_agents.references import build_references, save_references, summarize
from mentor_agents.traces import ModelStep, TraceStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="number of tasks")
    parser.add_argument("--split", choices=["train", "test", "ood"], default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--builder", choices=["create_agent", "react", "stategraph"], default="create_agent")
    parser.add_argument("--out", type=Path, default=Path("runs/calculator"), help="folder for traces and references")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint of the teacher; default: the scripted teacher")
    parser.add_argument("--model", default="gpt-4o-mini", help="teacher model name at --base-url")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "not-needed"))
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run attempt")
    parser.add_argument("--retries", type=int, default=3)
    args = parser.parse_args()

    if args.base_url:
        from langchain_openai import ChatOpenAI

        teacher = ChatOpenAI(model=args.model, base_url=args.base_url, api_key=args.api_key, temperature=0)
    else:
        teacher = ScriptedCalculatorTeacher()
    agent = build_agent(teacher, args.builder)
    tasks = make_tasks(args.n, args.split, args.seed)

    store = TraceStore(args.out / "traces.jsonl")
    already = store.recorded_keys()
    start = time.perf_counter()
    traces = record(agent, tasks, store, concurrency=args.concurrency, timeout_s=args.timeout, retries=args.retries)
    wall = time.perf_counter() - start

    references = build_references(traces)
    save_references(references, args.out / "references.jsonl")
    print(summarize(traces))
    print(f"\n{len(references)} references -> {args.out / 'references.jsonl'}; traces -> {store.path}")

    new = [t for t in traces if t.key not in already]
    if new:
        teacher_s = [sum(s.latency_s for s in t.steps if isinstance(s, ModelStep)) for t in new]
        own_s = [t.duration_s - m for t, m in zip(new, teacher_s)]
        print(f"\nrecorded {len(new)} new runs in {wall:.2f} s ({wall / len(new) * 1e3:.1f} ms per run, "
              f"concurrency {args.concurrency})")
        print(f"time per run outside the teacher (graph, tools, recording): "
              f"mean {sum(own_s) / len(own_s) * 1e3:.2f} ms, max {max(own_s) * 1e3:.2f} ms; "
              f"teacher time per run: mean {sum(teacher_s) / len(teacher_s) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
