"""A recording proxy: point an agent's OpenAI client at it, and every tool-using chat completion becomes a trace.

```
mentor proxy --upstream http://127.0.0.1:8080/v1 --store traces.jsonl --port 8000
# the agent: ChatOpenAI(base_url="http://127.0.0.1:8000/v1", ...)
```

How a conversation becomes traces (the store is append-only, so nothing is rewritten):

- An agent sends one request per model turn; each request carries the whole conversation so far. Every request
  that has ``tools`` is recorded as one `Trace` that reconstructs that conversation: a `ModelStep` for each earlier
  assistant turn (its input is the history before it), a `ToolStep` for each tool message, and a final `ModelStep`
  whose input is the exact request messages and whose output is the upstream answer.
- The turns of one conversation share a ``task_id`` (``proxy-`` + a hash of the system prompt and first user message)
  and a ``sample``: a request continues an open conversation when that conversation's last request messages plus
  the answer it got are a prefix of the new request's messages; otherwise it starts a new sample.
- The turn that answers without tool calls is the complete conversation: it goes to ``store`` with ``final_answer``
  set and ``metadata={"partial": False}``. Turns whose answer calls tools go to ``partial_store`` (when given) with
  ``metadata={"partial": True}``, never to ``store``: every core consumer (references, self-consistency, summaries,
  evaluation) reads each stored, non-failed trace as one complete run, so ``store`` holds only those.
- An upstream error is passed back to the client with its status and stored as a failed trace (``error`` set,
  ``partial`` True) in ``store``, where consumers skip it; the conversation stays open, so a retry of the same request
  continues it.
- Streaming (``stream=true``) is refused with a 400: the proxy records complete answers only.
- With ``lenient=True``, tool calls written as text in the answer's ``content`` (to tools the request offered) are
  moved into ``tool_calls`` in the response the client gets, so the agent runs them, and are stored with
  ``parsed_from_text=True``, in this turn and in the later turns that repeat them.

A trace's ``started_at`` and ``duration_s`` span the conversation from its first request the proxy saw. Earlier
turns the proxy never saw (it started mid-conversation) are rebuilt from the request history with zero latency and
usage. Tool steps come from the tool messages, which carry no error status over the OpenAI API, so their ``error`` is
always False.

Authorization headers and keys are forwarded upstream and never stored: every credential the proxy sees (the
client's Authorization header in any scheme, the injected upstream key, the user and password of an
``http://user:pass@host`` upstream) is redacted from every stored field, upstream error bodies included, and the
upstream URL is shown and stored without its user part. The client always gets the upstream's answer: a trace that
cannot be recorded (a malformed answer, a store that stopped being writable) is logged and counted in
``app.state.recording_failures``. The proxy keeps its open conversations in memory; sample numbers continue after
the ones already in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from mentor_agents.errors import InvalidInputError
from mentor_agents.messages import Message, ToolCall, content_text, decode_arguments, tool_names
from mentor_agents.toolcalls import parse_tool_calls
from mentor_agents.traces import ModelStep, ToolStep, Trace, TraceStore, Usage

from mentor_agents.integrations.openai.server import APIError, check_api_key, error_response, read_json_body

logger = logging.getLogger(__name__)

MAX_OPEN = 1000
"""Conversations kept open at once; the oldest unfinished ones are forgotten first."""


@dataclass
class Conversation:
    task_id: str
    sample: int
    messages: list[dict[str, Any]]
    """The last request's messages followed by the answer it got, in trace form (arguments as dicts)."""
    started_at: float = field(default_factory=time.time)
    parsed_from_text: set[str] = field(default_factory=set)
    turn_stats: dict[int, tuple[float, Usage]] = field(default_factory=dict)
    """Latency and usage of the answers recorded so far, by their index in ``messages``."""


def trace_message(message: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI message as stored in traces: validated as a `Message`, tool-call arguments as dicts, null content
    as "", no null fields."""
    out = Message.model_validate(message).model_dump(exclude_none=True)
    out["content"] = out.get("content", "")
    if out.get("tool_calls"):
        out["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": decode_arguments(call["function"].get("arguments"))}}
            for call in out["tool_calls"]
        ]
    return out


def message_key(message: dict[str, Any]) -> tuple:
    """What identifies a message across turns, ignoring how clients re-serialise it (null vs "" content)."""
    calls = tuple(
        (c.get("id"), c["function"]["name"], json.dumps(c["function"]["arguments"], sort_keys=True))
        for c in message.get("tool_calls") or ()
    )
    return message.get("role"), content_text(message.get("content")).strip(), calls, message.get("tool_call_id")


def task_id_for(messages: list[dict[str, Any]]) -> str:
    system = next((content_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")), "")
    user = next((content_text(m.get("content")) for m in messages if m.get("role") == "user"), "")
    return "proxy-" + hashlib.sha256(json.dumps([system, user]).encode()).hexdigest()[:16]


def usage_of(response: dict[str, Any]) -> Usage:
    """The answer's token counts; zero for counts an upstream reports in another type (the answer still counts)."""
    usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
    counts = {name: usage.get(key) for name, key in (("input_tokens", "prompt_tokens"),
                                                     ("output_tokens", "completion_tokens"))}
    return Usage(**{name: value if isinstance(value, int) and not isinstance(value, bool) else 0
                    for name, value in counts.items()})


class Recorder:
    """Turns proxied requests and answers into traces (see the module docstring)."""

    def __init__(self, store: TraceStore, upstream: str, partial_store: TraceStore | None = None):
        self.store, self.upstream, self.partial_store = store, upstream, partial_store
        self.open: list[Conversation] = []
        self.next_sample: dict[str, int] = {}
        known = store.recorded_keys() | (partial_store.recorded_keys() if partial_store else set())
        for task_id, sample in known:
            self.next_sample[task_id] = max(self.next_sample.get(task_id, 0), sample + 1)

    def conversation(self, messages: list[dict[str, Any]], started_at: float) -> Conversation:
        keys = [message_key(m) for m in messages]
        matches = [conv for conv in self.open if len(conv.messages) <= len(keys)
                   and keys[:len(conv.messages)] == [message_key(m) for m in conv.messages]]
        if matches:
            return max(matches, key=lambda conv: len(conv.messages))
        task_id = task_id_for(messages)
        sample = self.next_sample.get(task_id, 0)
        self.next_sample[task_id] = sample + 1
        conv = Conversation(task_id, sample, messages, started_at)
        self.open.append(conv)
        del self.open[:-MAX_OPEN]
        return conv

    def record(self, request: dict[str, Any], answer: dict[str, Any] | None, *, parsed_ids: list[str],
               latency_s: float, usage: Usage, model: str | None, error: str | None, started_at: float,
               secrets: list[str] = ()) -> Trace:
        """Store the trace of one turn, with every string in ``secrets`` redacted from every field."""
        messages = [trace_message(m) for m in request["messages"]]
        # OpenAI clients send tool results without the tool's name; traces from the graph recorder carry it.
        names = {c.get("id"): c["function"]["name"] for m in messages for c in m.get("tool_calls") or ()}
        for message in messages:
            if message.get("role") == "tool" and "name" not in message and message.get("tool_call_id") in names:
                message["name"] = names[message["tool_call_id"]]
        conv = self.conversation(messages, started_at)
        conv.parsed_from_text.update(parsed_ids)
        steps: list[ModelStep | ToolStep] = []
        calls_by_id: dict[str, ToolCall] = {}
        for i, message in enumerate(messages):
            if message.get("role") == "assistant":
                latency, turn_usage = conv.turn_stats.get(i, (0.0, Usage()))
                steps.append(self.model_step(messages[:i], message, conv, latency, turn_usage))
                calls_by_id.update((c.id, c) for c in steps[-1].tool_calls)
            elif message.get("role") == "tool":
                call = calls_by_id.get(message.get("tool_call_id", ""))
                steps.append(ToolStep(call_id=message.get("tool_call_id", ""), name=call.name if call else "",
                                      args=call.args if call else {}, result=content_text(message.get("content"))))
        final_answer = None
        partial = True
        if answer is not None:
            output = trace_message(answer)
            steps.append(self.model_step(messages, output, conv, latency_s, usage))
            conv.turn_stats[len(messages)] = (latency_s, usage)
            conv.messages = messages + [output]
            if not output.get("tool_calls"):
                final_answer, partial = content_text(output.get("content")), False
                if conv in self.open:
                    self.open.remove(conv)
        total = sum((s.usage for s in steps if isinstance(s, ModelStep)), Usage())
        trace = Trace(
            task_id=conv.task_id,
            sample=conv.sample,
            task_input=next((content_text(m.get("content")) for m in messages if m.get("role") == "user"), ""),
            system_prompt=next((content_text(m.get("content")) for m in messages
                                if m.get("role") in ("system", "developer")), None),
            tools=request.get("tools") or [],
            steps=steps,
            final_answer=final_answer,
            teacher_model=model,
            teacher_endpoint=self.upstream,
            started_at=conv.started_at,
            duration_s=started_at + latency_s - conv.started_at,
            usage=total,
            error=error,
            metadata={"partial": partial, "turn": sum(s.kind == "model" for s in steps)},
        )
        if secrets:
            trace = Trace.model_validate_json(redact(trace.model_dump_json(), list(secrets)))
        if not partial or error is not None:
            self.store.append(trace)
        elif self.partial_store is not None:
            self.partial_store.append(trace)
        return trace

    @staticmethod
    def model_step(inputs: list[dict[str, Any]], output: dict[str, Any], conv: Conversation, latency_s: float,
                   usage: Usage) -> ModelStep:
        calls = [call.model_copy(update={"parsed_from_text": call.id in conv.parsed_from_text})
                 for call in Message.model_validate(output).calls()]
        return ModelStep(input_messages=inputs, output=output, tool_calls=calls, latency_s=latency_s, usage=usage)


def promote_text_calls(answer: dict[str, Any], allowed: set[str]) -> list[str]:
    """Move calls written in ``answer["content"]`` into ``answer["tool_calls"]`` (in place); their ids."""
    if answer.get("tool_calls") or not allowed:
        return []
    parsed = parse_tool_calls(content_text(answer.get("content")), allowed=allowed, lenient=True)
    if not parsed.calls:
        return []
    answer["content"] = parsed.content or None
    answer["tool_calls"] = [{"id": c.id, "type": "function",
                             "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                            for c in parsed.calls]
    return [c.id for c in parsed.calls]


def without_userinfo(url: str) -> str:
    """``url`` without a ``user:password@`` part, for anything shown or stored."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def credentials(authorization: str | None, *known: str | None) -> list[str]:
    """The secrets to redact: an Authorization header whole and its token (any scheme, any case), and ``known``."""
    secrets = [authorization, *known]
    if authorization and " " in authorization.strip():
        secrets.append(authorization.strip().split(None, 1)[1].strip())
    return sorted({s.strip() for s in secrets if s and s.strip()}, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret (as written, and as JSON escapes it) replaced by ``<redacted>``."""
    for secret in secrets:
        for form in {secret, json.dumps(secret)[1:-1]}:
            text = text.replace(form, "<redacted>")
    return text


def check_writable(store: TraceStore) -> None:
    """Refuse a store the proxy could not append to, at startup rather than at the first conversation."""
    try:
        store.path.parent.mkdir(parents=True, exist_ok=True)
        open(store.path, "ab").close()
    except OSError as e:
        raise InvalidInputError(f"trace store {store.path}: cannot append there ({e.strerror or e})") from None


def create_proxy_app(upstream: str, store: TraceStore | str | os.PathLike[str], *, lenient: bool = False,
                     upstream_api_key: str | None = None, timeout_s: float = 120.0,
                     partial_store: TraceStore | str | os.PathLike[str] | None = None,
                     max_body_bytes: int = 10_000_000, api_key: str | None = None) -> FastAPI:
    """A FastAPI app forwarding ``/v1/chat/completions`` and ``/v1/models`` to ``upstream`` (a base URL ending in
    ``/v1``) and recording the chat completions whose request has ``tools``: complete conversations and failed
    requests in ``store``, intermediate turns in ``partial_store`` if given (see the module docstring).

    Without ``api_key``, the client's ``Authorization`` header is forwarded, or ``Bearer <upstream_api_key>`` when
    that is set. With ``api_key``, clients must send ``Authorization: Bearer <api_key>`` (needed to bind beyond
    loopback), and only ``upstream_api_key``, if any, goes upstream. A store that cannot be written is a
    `ValueError` here.
    """
    store = store if isinstance(store, TraceStore) else TraceStore(store)
    if partial_store is not None and not isinstance(partial_store, TraceStore):
        partial_store = TraceStore(partial_store)
    for writable in filter(None, (store, partial_store)):
        check_writable(writable)
    proxy = Proxy(upstream.rstrip("/"), store, partial_store, lenient=lenient, upstream_api_key=upstream_api_key,
                  api_key=api_key, timeout_s=timeout_s, max_body_bytes=max_body_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await proxy.client.aclose()

    app = FastAPI(title=f"mentor_agents recording proxy -> {proxy.shown}", lifespan=lifespan)
    app.state.requires_api_key = api_key is not None
    app.state.recording_failures = 0
    proxy.state = app.state

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        return await proxy.models(request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await proxy.chat_completions(request)

    return app


class Proxy:
    """The routes of `create_proxy_app`: forward a request upstream, pass the answer back, record the turn."""

    def __init__(self, upstream: str, store: TraceStore, partial_store: TraceStore | None, *, lenient: bool,
                 upstream_api_key: str | None, api_key: str | None, timeout_s: float, max_body_bytes: int):
        self.upstream, self.shown = upstream, without_userinfo(upstream)
        self.password = urllib.parse.urlsplit(upstream).password
        self.lenient, self.upstream_api_key, self.api_key = lenient, upstream_api_key, api_key
        self.max_body_bytes = max_body_bytes
        self.recorder = Recorder(store, self.shown, partial_store)
        self.lock = asyncio.Lock()
        self.client = httpx.AsyncClient(timeout=timeout_s)
        self.state: Any = None
        """The app's state, where recording failures are counted."""

    def headers(self, request: Request) -> dict[str, str]:
        if self.upstream_api_key is not None:
            return {"Authorization": f"Bearer {self.upstream_api_key}"}
        auth = request.headers.get("authorization")
        return {"Authorization": auth} if auth and self.api_key is None else {}

    def secrets(self, request: Request) -> list[str]:
        return credentials(request.headers.get("authorization"), self.upstream_api_key, self.api_key,
                           urllib.parse.unquote(self.password or "") or None, self.password)

    async def record(self, request: Request, body: dict[str, Any], answer: dict[str, Any] | None,
                     **fields: Any) -> None:
        """Record one turn; a failure is logged and counted, never passed on to the client."""
        try:
            async with self.lock:
                self.recorder.record(body, answer, secrets=self.secrets(request), **fields)
        except Exception:
            self.state.recording_failures += 1
            logger.exception("could not record a conversation turn of task %r (%d recording failure(s) so far)",
                             body.get("model"), self.state.recording_failures)

    async def models(self, request: Request) -> Response:
        check_api_key(request, self.api_key)
        try:
            reply = await self.client.get(f"{self.upstream}/models", headers=self.headers(request))
        except httpx.HTTPError as e:
            return error_response(502, redact(f"upstream {self.shown} unreachable: {type(e).__name__}: {e}",
                                              self.secrets(request)), type="upstream_error",
                                  code="upstream_unreachable")
        return Response(reply.content, status_code=reply.status_code,
                        media_type=reply.headers.get("content-type", "application/json"))

    async def chat_completions(self, request: Request) -> Response:
        check_api_key(request, self.api_key)
        body = await read_json_body(request, self.max_body_bytes)
        recorded = check_request(body)
        started_at, start = time.time(), time.perf_counter()
        try:
            reply = await self.client.post(f"{self.upstream}/chat/completions", json=body,
                                           headers=self.headers(request))
        except httpx.HTTPError as e:
            status = 504 if isinstance(e, httpx.TimeoutException) else 502
            message = redact(f"upstream {self.shown} failed: {type(e).__name__}: {e}", self.secrets(request))
            if recorded:
                await self.record(request, body, None, parsed_ids=[], latency_s=time.perf_counter() - start,
                                  usage=Usage(), model=body.get("model"), error=message, started_at=started_at)
            return error_response(status, message, type="upstream_error", code="upstream_unreachable")
        latency_s = time.perf_counter() - start
        try:
            data = reply.json()
        except ValueError:
            data = None
        if not (reply.is_success and isinstance(data, dict) and isinstance(data.get("choices"), list)
                and bool(data["choices"])):
            return await self.refused(request, body, reply, recorded, latency_s, started_at)
        choice = data["choices"][0]
        answer = choice.get("message") if isinstance(choice, dict) else None
        parsed_ids: list[str] = []
        if self.lenient and isinstance(answer, dict) and isinstance(answer.get("content"), (str, type(None))):
            parsed_ids = promote_text_calls(answer, tool_names(body.get("tools")))
            if parsed_ids:
                choice["finish_reason"] = "tool_calls"
        if recorded:
            error = None if isinstance(answer, dict) else f"upstream answer has no message: {reply.text[:1000]}"
            await self.record(request, body, answer if error is None else None, parsed_ids=parsed_ids,
                              latency_s=latency_s, usage=usage_of(data),
                              model=data.get("model") or body.get("model"), error=error, started_at=started_at)
        return JSONResponse(data, status_code=reply.status_code)

    async def refused(self, request: Request, body: dict[str, Any], reply: httpx.Response, recorded: bool,
                      latency_s: float, started_at: float) -> Response:
        """An upstream error, or a success without choices: recorded as a failed turn, passed back to the client
        (a 502 for a success without choices)."""
        if recorded:
            # Auth failures can echo (part of) the key: keep only the status for them.
            detail = "authentication failed" if reply.status_code in (401, 403) else reply.text[:1000]
            await self.record(request, body, None, parsed_ids=[], latency_s=latency_s, usage=Usage(),
                              model=body.get("model"), started_at=started_at,
                              error=f"upstream HTTP {reply.status_code}: {detail}")
        if reply.is_success:
            return error_response(502, redact(f"upstream returned no choices: {reply.text[:500]}",
                                              self.secrets(request)),
                                  type="upstream_error", code="bad_upstream_response")
        return Response(reply.content, status_code=reply.status_code,
                        media_type=reply.headers.get("content-type", "application/json"))


def check_request(body: dict[str, Any]) -> bool:
    """`APIError` (400) for a request the proxy does not forward (streaming, malformed messages or tools); whether
    it is recorded (it offers tools)."""
    if body.get("stream"):
        raise APIError(400, "the recording proxy does not support stream=true; send stream=false",
                       param="stream", code="stream_unsupported")
    if not isinstance(body.get("messages"), list) or not all(isinstance(m, dict) for m in body["messages"]):
        raise APIError(400, "'messages' must be a list of message objects", param="messages")
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(
            isinstance(t, dict) and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools)):
        raise APIError(400, "'tools' must be a list of {'type': 'function', 'function': {...}}", param="tools")
    return bool(tools)
