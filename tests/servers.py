"""Loopback servers the tests start: a free port, and a `mentor` CLI subprocess that answers /health."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from typing import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mentor_process(args: list[str], port: int, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """``python -m mentor_agents.app.cli *args`` once it answers ``/health`` on ``port``; terminated on exit."""
    process = subprocess.Popen([sys.executable, "-m", "mentor_agents.app.cli", *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)
