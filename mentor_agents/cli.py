"""The ``mentor`` command. Each subcommand is one ``add_<name>(subparsers)`` function that registers its parser and
sets ``func``; integrations are imported inside the command, so ``mentor --help`` needs no web or agent stack.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence


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
    p.set_defaults(func=run_proxy)


def run_proxy(args: argparse.Namespace) -> int:
    from mentor_agents.integrations.openai.proxy import create_proxy_app
    from mentor_agents.integrations.openai.server import serve

    key = None
    if args.upstream_api_key_env:
        key = os.environ.get(args.upstream_api_key_env)
        if not key:
            raise SystemExit(f"mentor proxy: --upstream-api-key-env {args.upstream_api_key_env}: "
                             "that environment variable is not set or empty")
    app = create_proxy_app(args.upstream, args.store, lenient=args.lenient, upstream_api_key=key,
                           timeout_s=args.timeout, partial_store=args.partial_store)
    print(f"mentor proxy: http://{args.host}:{args.port}/v1 -> {args.upstream}, recording to {args.store}",
          file=sys.stderr)
    serve(app, host=args.host, port=args.port)
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_proxy]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mentor", description="Distill a tool-calling agent into a small student.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
