"""Load benchmark on loopback: `mentor serve` under 32 concurrent clients, and the teacher recorder against a slow
teacher endpoint.

    OMP_NUM_THREADS=1 python examples/bench_load.py [--clients 32] [--seconds 60]

1. Serving. A saved tiny student runs under ``mentor serve`` (a subprocess on a free loopback port, API key on).
   ``--clients`` clients each send chat-completion requests back to back (a calculator question with tools; every
   fourth one streamed) until ``--seconds`` have passed; the loop is bounded by the deadline and by
   ``--max-requests``. Reported: errors (any non-200, malformed reply or exception; must be 0), p50/p95 latency,
   requests/s, and the server's RSS after warm-up and at the end (growth must stay under ``--rss-bound``).
2. Recording. The scripted calculator teacher is served over HTTP with an artificial ``--teacher-delay`` per model
   call (its endpoint takes up to 16 calls at once, as a real one would); `record` runs the calculator agent through
   `OpenAITeacher` on ``--tasks`` tasks at concurrency 1, 4 and 8. Reported: tasks/s and failed traces (must be 0).

Writes examples/results/bench_load.json and exits non-zero when a bound is broken.
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
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent, make_tasks
from mentor_agents.integrations.langgraph.recording import record
from mentor_agents.integrations.openai.server import create_app, running_server
from mentor_agents.integrations.openai.teacher import OpenAITeacher
from mentor_agents.from_scratch import make_tiny_student
from mentor_agents.traces import ModelStep, TraceStore

KEY = "bench-key"
TOOLS = [{"type": "function", "function": {"name": name, "description": f"{name.title()} two numbers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}
    for name in ("add", "multiply")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def one_request(client: httpx.AsyncClient, n: int, max_tokens: int) -> None:
    body = {"model": "student", "max_tokens": max_tokens, "tools": TOOLS,
            "messages": [{"role": "user", "content": f"What is {n % 97} plus {n % 13}?"}]}
    if n % 4 == 3:
        body["stream"] = True
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            text = (await response.aread()).decode()
            if response.status_code != 200 or not text.rstrip().endswith("data: [DONE]") or '"error"' in text:
                raise RuntimeError(f"stream: {response.status_code} {text[-200:]}")
        return
    response = await client.post("/v1/chat/completions", json=body)
    if response.status_code != 200 or response.json()["choices"][0]["message"]["role"] != "assistant":
        raise RuntimeError(f"{response.status_code} {response.text[:200]}")


async def load(base_url: str, clients: int, seconds: float, max_requests: int, max_tokens: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while time.perf_counter() < deadline and issued < max_requests:
            issued += 1
            start = time.perf_counter()
            try:
                await one_request(client, issued, max_tokens)
            except Exception as e:  # counted and reported; the benchmark must see every failure
                errors.append(f"{type(e).__name__}: {e}"[:300])
            else:
                latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                                 limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    wall = time.perf_counter() - start
    return {"clients": clients, "seconds": round(wall, 2), "requests": len(latencies) + len(errors),
            "errors": len(errors), "first_errors": errors[:5], "requests_per_s": round(len(latencies) / wall, 2),
            "latency_p50_s": round(percentile(latencies, 50), 4), "latency_p95_s": round(percentile(latencies, 95), 4),
            "latency_max_s": round(max(latencies), 4)}


def bench_serving(work: Path, args) -> dict:
    student = make_tiny_student(work / "student")
    port = free_port()
    env = {**os.environ, "BENCH_KEY": KEY, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mentor_agents.app.cli", "serve", str(student), "--port", str(port), "--api-key-env",
         "BENCH_KEY", "--max-new-tokens", str(args.max_tokens), "--model-name", "student"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"mentor serve exited: {server.stderr.read()[-2000:]}")
            time.sleep(0.1)
        process = psutil.Process(server.pid)
        # Warm-up: allocator pools, tokenizer caches and the first generate settle before the baseline.
        asyncio.run(load(base, args.clients, 5, 10_000, args.max_tokens))
        rss_start = process.memory_info().rss
        result = asyncio.run(load(base, args.clients, args.seconds, args.max_requests, args.max_tokens))
        rss_end = process.memory_info().rss
        healthy = httpx.get(f"{base}/health", timeout=5).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    growth = rss_end / rss_start - 1
    return {**result, "server_rss_start_mb": round(rss_start / 2**20, 1), "server_rss_end_mb": round(rss_end / 2**20, 1),
            "rss_growth": round(growth, 4), "rss_growth_bound": args.rss_bound, "healthy_after": healthy,
            "ok": result["errors"] == 0 and growth < args.rss_bound and healthy}


class SlowTeacher(ScriptedCalculatorTeacher):
    """The scripted teacher with a fixed delay per model call, like a remote LLM's latency."""

    delay_s: float = 0.2

    async def _agenerate(self, *args, **kwargs):
        await asyncio.sleep(self.delay_s)
        return await super()._agenerate(*args, **kwargs)


def bench_recording(work: Path, args) -> dict:
    tasks = make_tasks(args.tasks, "train", seed=0)
    app = create_app(SlowTeacher(delay_s=args.teacher_delay), "slow-teacher", max_concurrency=16)
    levels = []
    with running_server(app) as url:
        for concurrency in (1, 4, 8):
            teacher = OpenAITeacher(base_url=url, model="slow-teacher", api_key="unused").chat_model()
            store = TraceStore(work / f"traces-c{concurrency}.jsonl")
            start = time.perf_counter()
            traces = record(build_agent(teacher), tasks, store, concurrency=concurrency, progress=False)
            wall = time.perf_counter() - start
            calls = sum(isinstance(step, ModelStep) for t in traces for step in t.steps)
            levels.append({"concurrency": concurrency, "tasks": len(traces), "model_calls": calls,
                           "failed": sum(t.error is not None for t in traces), "seconds": round(wall, 2),
                           "tasks_per_s": round(len(traces) / wall, 2), "model_calls_per_s": round(calls / wall, 2)})
    return {"teacher_delay_s": args.teacher_delay, "levels": levels,
            "ok": all(level["failed"] == 0 and level["tasks"] == args.tasks for level in levels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-requests", type=int, default=200_000, help="bound on requests, besides the deadline")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rss-bound", type=float, default=0.2, help="allowed RSS growth of the server (0.2 = 20%%)")
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--teacher-delay", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_load.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        serving = bench_serving(Path(tmp), args)
        print(json.dumps(serving, indent=2), flush=True)
        recording = bench_recording(Path(tmp), args)
        print(json.dumps(recording, indent=2), flush=True)
    result = {"serving": serving, "recording": recording,
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "load_avg_1m": round(os.getloadavg()[0], 2)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not (serving["ok"] and recording["ok"]):
        sys.exit("a bound was broken: see " + str(args.out))


if __name__ == "__main__":
    main()
