"""An OpenAI-compatible chat-completions server for any LangChain chat model.

It serves a scripted teacher in tests and the trained student (`mentor serve`): ``POST /v1/chat/completions``
(plain and ``stream=true``), ``GET /v1/models`` and ``GET /health``. Requests are turned into LangChain messages,
``tools`` are bound with ``chat_model.bind_tools``, and the answer comes back in the shape ``ChatOpenAI`` and the
``openai`` client parse: tool calls with ids and JSON-string arguments, ``finish_reason`` and ``usage``.

Model calls run one at a time by default (``max_concurrency=1``): a local model is not thread-safe and gains
nothing from overlapping calls, so concurrent clients queue.

```python
app = create_app(chat_model, "calculator-student", api_key="secret")
with running_server(app) as base_url:          # http://127.0.0.1:<free port>/v1
    ChatOpenAI(base_url=base_url, model="calculator-student", api_key="secret")
```
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import socket
import threading
import time
import uuid
from typing import Any, AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from mentor_agents.toolcalls import new_call_id


class APIError(Exception):
    """An error answered as OpenAI-style JSON: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, type=self.type, param=self.param, code=self.code)


def error_response(status: int, message: str, *, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


async def read_json_body(request: Request, max_body_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object; 413 past ``max_body_bytes`` (counted while reading, not trusted from
    Content-Length), 400 when it is not a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise APIError(413, f"request body is {declared} bytes; the limit is {max_body_bytes}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise APIError(413, f"request body exceeds the limit of {max_body_bytes} bytes", code="body_too_large")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def check_api_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key")


def text_of(content: Any, param: str) -> str:
    """A message ``content`` (string, null, or a list of text parts) as one string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise APIError(400, f"only text content parts are supported, got {kind!r}", param=f"{param}[{i}]")
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"content must be a string or a list of text parts, got {type(content).__name__}",
                   param=param)


def parse_arguments(arguments: Any, param: str) -> dict[str, Any]:
    """Tool-call arguments, sent as a JSON string (OpenAI, ChatOpenAI) or an object, as a dict."""
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise APIError(400, f"tool-call arguments are not valid JSON: {e}", param=param) from None
    if not isinstance(arguments, dict):
        raise APIError(400, f"tool-call arguments must be a JSON object, got {type(arguments).__name__}", param=param)
    return arguments


def to_langchain_messages(messages: Any) -> list[BaseMessage]:
    """OpenAI chat messages as LangChain messages; `APIError` (400) naming the bad field."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    converted: list[BaseMessage] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"each message must be an object, got {type(message).__name__}", param=param)
        role = message.get("role")
        content = text_of(message.get("content"), f"{param}.content")
        if role in ("system", "developer"):
            converted.append(SystemMessage(content))
        elif role == "user":
            converted.append(HumanMessage(content))
        elif role == "assistant":
            calls = []
            for j, call in enumerate(message.get("tool_calls") or []):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise APIError(400, "a tool call needs 'function': {'name', 'arguments'}",
                                   param=f"{param}.tool_calls[{j}]")
                args = parse_arguments(function.get("arguments"), f"{param}.tool_calls[{j}].function.arguments")
                calls.append({"name": function["name"], "args": args, "id": call.get("id") or new_call_id(),
                              "type": "tool_call"})
            converted.append(AIMessage(content, tool_calls=calls))
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise APIError(400, "a tool message needs a 'tool_call_id' string", param=f"{param}.tool_call_id")
            converted.append(ToolMessage(content, tool_call_id=call_id))
        else:
            raise APIError(400, f"unsupported role {role!r}; expected system, developer, user, assistant or tool",
                           param=f"{param}.role")
    return converted


def openai_tool_calls(message: AIMessage) -> list[dict[str, Any]]:
    return [
        {"id": call.get("id") or new_call_id(), "type": "function",
         "function": {"name": call["name"], "arguments": json.dumps(call["args"])}}
        for call in message.tool_calls
    ]


def openai_usage(message: BaseMessage) -> dict[str, int]:
    usage = getattr(message, "usage_metadata", None) or {}
    prompt, completion = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def create_app(chat_model: BaseChatModel, model_name: str, *, api_key: str | None = None,
               max_body_bytes: int = 1_000_000, max_tokens_limit: int = 4096, max_concurrency: int = 1) -> FastAPI:
    """A FastAPI app serving ``chat_model`` as ``model_name`` over the OpenAI chat-completions API.

    With ``api_key`` set, every ``/v1`` route needs ``Authorization: Bearer <api_key>``. Requests asking for more
    than ``max_tokens_limit`` tokens or larger than ``max_body_bytes`` are refused. At most ``max_concurrency``
    model calls run at once; the others wait.
    """
    app = FastAPI(title=f"mentor_agents: {model_name}")
    app.state.requires_api_key = api_key is not None
    slots = asyncio.Semaphore(max_concurrency)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_api_key(request, api_key)
        return {"object": "list",
                "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "mentor_agents"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_api_key(request, api_key)
        body = await read_json_body(request, max_body_bytes)
        if body.get("model") != model_name:
            raise APIError(404, f"model {body.get('model')!r} is not served here; this server serves {model_name!r}",
                           param="model", code="model_not_found")
        messages = to_langchain_messages(body.get("messages"))
        if body.get("n", 1) != 1:
            raise APIError(400, "only n=1 is supported", param="n")
        call_kwargs: dict[str, Any] = {}
        settings: dict[str, Any] = {}
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise APIError(400, f"'{name}' must be a positive integer", param=name)
            if value > max_tokens_limit:
                raise APIError(400, f"'{name}' is {value}; this server allows at most {max_tokens_limit}", param=name)
            settings["max_tokens"] = value
        if body.get("temperature") is not None:
            if not isinstance(body["temperature"], (int, float)) or not 0 <= body["temperature"] <= 2:
                raise APIError(400, "'temperature' must be a number between 0 and 2", param="temperature")
            settings["temperature"] = body["temperature"]
        if body.get("stop") is not None:
            stop = body["stop"]
            call_kwargs["stop"] = [stop] if isinstance(stop, str) else stop

        model: Any = configured(chat_model, settings)
        tools = body.get("tools")
        if tools:
            if not isinstance(tools, list) or not all(isinstance(t, dict) and "function" in t for t in tools):
                raise APIError(400, "'tools' must be a list of {'type': 'function', 'function': {...}}", param="tools")
            bind_kwargs = {} if body.get("tool_choice") is None else {"tool_choice": body["tool_choice"]}
            model = model.bind_tools(tools, **bind_kwargs)

        completion_id = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                stream_events(model, messages, call_kwargs, completion_id, created, include_usage),
                media_type="text/event-stream",
            )
        async with slots:
            try:
                message = await model.ainvoke(messages, **call_kwargs)
            except Exception as e:
                return model_error(e)
        tool_calls = openai_tool_calls(message)
        text = message.text
        reply: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
        if tool_calls:
            reply["tool_calls"] = tool_calls
        return {
            "id": completion_id, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "message": reply, "logprobs": None,
                         "finish_reason": "tool_calls" if tool_calls else "stop"}],
            "usage": openai_usage(message),
        }

    async def stream_events(model: Any, messages: list[BaseMessage], call_kwargs: dict[str, Any],
                            completion_id: str, created: int, include_usage: bool) -> AsyncIterator[str]:
        def event(delta: dict[str, Any] | None, finish_reason: str | None = None, **extra: Any) -> str:
            chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                     "choices": [] if delta is None else
                     [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}
            return f"data: {json.dumps(chunk)}\n\n"

        yield event({"role": "assistant", "content": ""})
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        called = False
        async with slots:
            try:
                async for chunk in model.astream(messages, **call_kwargs):
                    for delta in chunk_deltas(chunk):
                        called = called or "tool_calls" in delta
                        yield event(delta)
                    if getattr(chunk, "usage_metadata", None):
                        usage = {k: usage[k] + v for k, v in openai_usage(chunk).items()}
            except Exception as e:
                # The status line has gone out already: report the failure in-band, as OpenAI does.
                yield f"data: {json.dumps(model_error_body(e))}\n\n"
                yield "data: [DONE]\n\n"
                return
        yield event({}, "tool_calls" if called else "stop")
        if include_usage:
            yield event(None, usage=usage)
        yield "data: [DONE]\n\n"

    return app


SETTING_FIELDS = {"max_tokens": ("max_tokens", "max_new_tokens"), "temperature": ("temperature",)}
"""The chat-model fields that take each request setting: ChatOpenAI has ``max_tokens``, local models
``max_new_tokens``."""


def configured(chat_model: BaseChatModel, settings: dict[str, Any]) -> BaseChatModel:
    """A shallow copy of ``chat_model`` with the request's settings on the fields it has; settings the model has no
    field for are ignored."""
    fields = type(chat_model).model_fields
    update = {}
    for name, value in settings.items():
        field = next((f for f in SETTING_FIELDS[name] if f in fields), None)
        if field is not None:
            update[field] = value
    return chat_model.model_copy(update=update) if update else chat_model


def chunk_deltas(chunk: BaseMessage) -> Iterator[dict[str, Any]]:
    """The stream deltas of one chunk: its text, then one delta per tool-call piece."""
    if chunk.text:
        yield {"content": chunk.text}
    if isinstance(chunk, AIMessageChunk):
        for n, piece in enumerate(chunk.tool_call_chunks):
            index = piece.get("index")
            call: dict[str, Any] = {"index": n if index is None else index, "type": "function",
                                    "function": {"arguments": piece.get("args") or ""}}
            if piece.get("name"):
                call["id"] = piece.get("id") or new_call_id()
                call["function"]["name"] = piece["name"]
            yield {"tool_calls": [call]}
    elif isinstance(chunk, AIMessage):
        # A model without native streaming yields its whole message once.
        for n, call in enumerate(openai_tool_calls(chunk)):
            yield {"tool_calls": [{"index": n, **call}]}


def model_error_body(e: Exception) -> dict[str, Any]:
    return {"error": {"message": f"the model failed: {type(e).__name__}: {e}", "type": "server_error",
                      "param": None, "code": "model_error"}}


def model_error(e: Exception) -> JSONResponse:
    return JSONResponse(model_error_body(e), status_code=500)


@contextlib.contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread; yields its base URL (``http://host:port/v1``).

    ``port=0`` picks a free port. The server stops when the block exits, waiting at most 2 s for open requests.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the server on {host}:{sock.getsockname()[1]} failed to start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run ``app`` in the foreground until interrupted (Ctrl-C).

    Binding an address other than loopback is refused unless the app checks an API key: a student endpoint open
    to the network without one would let anyone run the model and its tool calls.
    """
    if not is_loopback(host) and not getattr(app.state, "requires_api_key", False):
        raise PermissionError(
            f"refusing to bind {host}: serving beyond loopback needs an API key (create_app(..., api_key=...), "
            "or --api-key-env for `mentor serve`)"
        )
    uvicorn.run(app, host=host, port=port, log_level="info")
