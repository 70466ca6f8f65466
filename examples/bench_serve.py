"""Benchmark: latency of a student served by ``mentor serve``, queried by the real ``openai`` client, without and
with the prefix cache, and the server's overhead against calling `StudentChatModel` in-process.

    OMP_NUM_THREADS=1 python examples/bench_serve.py [--students tiny smollm2-135m] [--levels 1 8] [--caches off on]

For each student and cache setting, ``mentor serve DIR`` runs as a subprocess (what users run) on a free loopback
port, with ``--prefix-cache-mb 0`` (off: every request prefills its whole prompt) or the default cache (on). At each
concurrency level C, C clients send ``--requests-per-client`` requests each: the calculator system prompt with the
12 calculator tools (about 1,200 tokens) and a calculator question, a different question for every request, so the
cache can reuse only the system prompt and tools, as for a served agent's new conversations (greedy, ``max_tokens``
fixed). One warm-up request with another question comes first. The script reports p50/p95 latency, requests/s,
completion tokens/s and the server process's CPU seconds per request (user + system, from /proc: the machine is
shared, so wall clock swings). Overhead (cache on): one client's sequential requests against
``StudentChatModel.invoke`` in this process with the same messages, tools and token cap, alternating one with the
other so both see the same load. Updates the measured students in examples/results/bench_serve.json and prints
markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import torch
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from openai import AsyncOpenAI

from mentor_agents.demo.calculator import SYSTEM_PROMPT, TOOLS, make_tasks
from mentor_agents.integrations.langgraph.student_model import StudentChatModel
from mentor_agents.student import convert_gguf, find_packaged_gguf, tiny_student_dir

QUESTION = "A shop sells 17 boxes of 23 pens and then 9 more pens. How many pens did it sell?"
MODEL_NAME = "student"
QUESTIONS = [task.input for task in make_tasks(400, "test")]
"""A fresh question for every measured request: a repeated prompt would be served almost entirely from the cache."""


def student_dir(name: str) -> Path:
    """The model directory ``mentor serve`` gets: the cached tiny student, or SmolLM2 converted once from its GGUF."""
    if name == "tiny":
        return tiny_student_dir()
    if name == "smollm2-135m":
        return convert_gguf(find_packaged_gguf("smollm2-135m-instruct"))
    raise SystemExit(f"unknown student {name!r}; expected tiny or smollm2-135m")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, port: int, max_tokens: int, concurrency: int, cache: bool) -> subprocess.Popen:
    command = ["mentor", "serve", str(model_dir), "--port", str(port), "--model-name", MODEL_NAME,
               "--max-new-tokens", str(max_tokens), "--concurrency", str(concurrency)]
    command += [] if cache else ["--prefix-cache-mb", "0"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"`{' '.join(command)}` exited with {server.returncode}: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"`{' '.join(command)}` did not answer /health within 300 s")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), so p95 of few samples is not just the maximum."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_question(request: dict, question: str) -> dict:
    return {**request, "messages": [request["messages"][0], {"role": "user", "content": question}]}


async def load_level(client: AsyncOpenAI, request: dict, clients: int, per_client: int, questions: Iterator[str],
                     server_pid: int) -> dict:
    latencies: list[float] = []
    completion_tokens = tool_call_replies = 0

    async def one_client() -> None:
        nonlocal completion_tokens, tool_call_replies
        for _ in range(per_client):
            body = with_question(request, next(questions))
            start = time.perf_counter()
            reply = await client.chat.completions.create(**body)
            latencies.append(time.perf_counter() - start)
            completion_tokens += reply.usage.completion_tokens
            tool_call_replies += bool(reply.choices[0].message.tool_calls)

    start, cpu = time.perf_counter(), cpu_seconds(server_pid)
    await asyncio.gather(*(one_client() for _ in range(clients)))
    wall, cpu = time.perf_counter() - start, cpu_seconds(server_pid) - cpu
    return {
        "clients": clients, "requests": len(latencies), "wall_s": wall, "server_cpu_s": cpu,
        "server_cpu_s_per_request": cpu / len(latencies),
        "p50_ms": 1000 * percentile(latencies, 0.5), "p95_ms": 1000 * percentile(latencies, 0.95),
        "requests_per_s": len(latencies) / wall, "completion_tokens_per_s": completion_tokens / wall,
        "mean_completion_tokens": completion_tokens / len(latencies),
        "replies_with_tool_calls": tool_call_replies,
    }


async def bench_server(base_url: str, request: dict, levels: list[int], per_client: int, server_pid: int) -> list[dict]:
    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=3600)
    questions = iter(QUESTIONS[1:])
    try:
        # Warm-up: first-call allocations, template compilation and, with the cache, the system prompt and tools.
        await client.chat.completions.create(**with_question(request, QUESTIONS[0]))
        return [await load_level(client, request, c, per_client, questions, server_pid) for c in levels]
    finally:
        await client.close()


async def bench_overhead(base_url: str, request: dict, model_dir: Path, max_tokens: int, repeats: int) -> dict:
    """Served and in-process calls, alternating, one at a time: the other helpers' load hits both alike."""
    model = StudentChatModel.from_pretrained(str(model_dir), max_new_tokens=max_tokens).bind_tools(TOOLS)
    messages = [SystemMessage(SYSTEM_PROMPT), HumanMessage(QUESTION)]
    model.invoke(messages)
    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=3600)
    served, local, tokens = [], [], {"served": 0, "in_process": 0}
    try:
        await client.chat.completions.create(**request)
        for _ in range(repeats):
            start = time.perf_counter()
            reply = await client.chat.completions.create(**request)
            served.append(time.perf_counter() - start)
            tokens["served"] += reply.usage.completion_tokens
            start = time.perf_counter()
            message = model.invoke(messages)
            local.append(time.perf_counter() - start)
            tokens["in_process"] += message.usage_metadata["output_tokens"]
    finally:
        await client.close()
    row = lambda seconds, n: {"requests": repeats, "p50_ms": 1000 * statistics.median(seconds),  # noqa: E731
                              "p95_ms": 1000 * percentile(seconds, 0.95), "mean_completion_tokens": n / repeats}
    return {"sequential": row(served, tokens["served"]), "in_process": row(local, tokens["in_process"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", nargs="+", default=["tiny", "smollm2-135m"])
    parser.add_argument("--levels", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--caches", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--sequential", type=int, default=4,
                        help="requests for the overhead comparison (cache on); 0 skips it")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--server-concurrency", type=int, default=1, help="`mentor serve --concurrency`")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_serve.json"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    request = {
        "model": MODEL_NAME, "max_tokens": args.max_tokens, "temperature": 0,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": QUESTION}],
        "tools": [convert_to_openai_tool(t) for t in TOOLS],
    }
    out = Path(args.out)
    stored = json.loads(out.read_text()) if out.exists() else {}
    results = {
        "machine": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "load_average_before": os.getloadavg(),
        "settings": {"max_tokens": args.max_tokens, "requests_per_client": args.requests_per_client,
                     "sequential_requests": args.sequential, "server_concurrency": args.server_concurrency,
                     "tools": len(TOOLS), "questions": "make_tasks(400, 'test'), a new one per request",
                     "decoding": "greedy",
                     "server": "mentor serve (subprocess, uvicorn), openai.AsyncOpenAI on 127.0.0.1"},
        "students": {k: v for k, v in stored.get("students", {}).items() if "cache_on" in v or "cache_off" in v},
    }
    for name in args.students:
        model_dir = student_dir(name)
        res = results["students"].setdefault(name, {})
        res["model_dir"] = str(model_dir)
        for cache in args.caches:
            res[f"cache_{cache}"] = measure(model_dir, request, args, cache == "on")
        summarize(res)
    results["load_average_after"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    report(results, args)


def measure(model_dir: Path, request: dict, args: argparse.Namespace, cache: bool) -> dict:
    """One server (cache on or off): the concurrency levels, then (cache on) the overhead comparison."""
    port = free_port()
    server = start_server(model_dir, port, args.max_tokens, args.server_concurrency, cache)
    base_url = f"http://127.0.0.1:{port}/v1"
    res: dict = {"load_average_before": os.getloadavg()}
    try:
        if args.levels:
            res["levels"] = asyncio.run(bench_server(base_url, request, args.levels, args.requests_per_client,
                                                     server.pid))
        if cache and args.sequential:
            res.update(asyncio.run(bench_overhead(base_url, request, model_dir, args.max_tokens, args.sequential)))
            res["overhead_p50_ms"] = res["sequential"]["p50_ms"] - res["in_process"]["p50_ms"]
            res["overhead_ratio"] = res["sequential"]["p50_ms"] / res["in_process"]["p50_ms"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    res["load_average_after"] = os.getloadavg()
    return res


def summarize(res: dict) -> None:
    """Cache off / on ratios per concurrency level: p50 latency and server CPU seconds per request."""
    if "levels" not in res.get("cache_off", {}) or "levels" not in res.get("cache_on", {}):
        return
    res["speedup"] = {
        str(off["clients"]): {"p50": off["p50_ms"] / on["p50_ms"],
                              "server_cpu_per_request": off["server_cpu_s_per_request"] / on["server_cpu_s_per_request"]}
        for off, on in zip(res["cache_off"]["levels"], res["cache_on"]["levels"]) if off["clients"] == on["clients"]}


def report(results: dict, args: argparse.Namespace) -> None:
    print(f"load average before {results['load_average_before']}, after {results['load_average_after']}; "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s), max_tokens {args.max_tokens}, "
          f"server concurrency {args.server_concurrency}\n")
    print("| student | prefix cache | clients | requests | p50 ms | p95 ms | server CPU s / request | req/s | "
          "completion tok/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, res in results["students"].items():
        for cache in ("off", "on"):
            for level in res.get(f"cache_{cache}", {}).get("levels", []):
                print(f"| {name} | {cache} | {level['clients']} | {level['requests']} | {level['p50_ms']:.0f} | "
                      f"{level['p95_ms']:.0f} | {level['server_cpu_s_per_request']:.2f} | "
                      f"{level['requests_per_s']:.2f} | {level['completion_tokens_per_s']:.1f} |")
    print("\n| student | clients | p50 speedup (off / on) | server CPU speedup |")
    print("|---|---:|---:|---:|")
    for name, res in results["students"].items():
        for clients, ratio in res.get("speedup", {}).items():
            print(f"| {name} | {clients} | {ratio['p50']:.2f}x | {ratio['server_cpu_per_request']:.2f}x |")
    print("\n| student | server p50 ms (1 client, alternating, cache on) | in-process p50 ms | overhead ms | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, res in results["students"].items():
        on = res.get("cache_on", {})
        if "sequential" in on:
            print(f"| {name} | {on['sequential']['p50_ms']:.0f} | {on['in_process']['p50_ms']:.0f} | "
                  f"{on['overhead_p50_ms']:.1f} | {on['overhead_ratio']:.3f} |")
    print("\nwrote", args.out)


if __name__ == "__main__":
    main()
