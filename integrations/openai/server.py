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
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Literal

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
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
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from mentor_agents.distill import DistilledStudent
from mentor_agents.messages import ArgumentsError, content_text, decode_arguments
from mentor_agents.toolcalls import new_call_id


class RequestPart(BaseModel):
    # Strict: a client sending 5 where a string belongs made a mistake; extra fields are ignored as OpenAI does.
    model_config = ConfigDict(strict=True, extra="ignore")


class FunctionCall(RequestPart):
    name: str
    arguments: str | dict[str, Any] | None = None
    """A JSON object, as a string (what OpenAI clients send) or as an object."""


class ToolCallRequest(RequestPart):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(RequestPart):
    type: Literal["text"]
    text: str


class ChatMessage(RequestPart):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallRequest] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class FunctionSchema(RequestPart):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSchema(RequestPart):
    type: Literal["function"] = "function"
    function: FunctionSchema


class ToolChoiceFunction(RequestPart):
    name: str


class NamedToolChoice(RequestPart):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction


class StreamOptions(RequestPart):
    include_usage: bool = False


class ChatCompletionRequest(RequestPart):
    """The body of ``POST /v1/chat/completions``: the OpenAI fields this server reads."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolSchema] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def json_object(cls, data: Any) -> Any:
        # FastAPI hands over the raw bytes when the Content-Type is not JSON (curl -d sends a form type).
        if isinstance(data, (bytes, str)):
            try:
                data = json.loads(data)
            except (ValueError, RecursionError) as e:
                raise ValueError(f"not valid JSON ({type(e).__name__}: {e})") from None
        if isinstance(data, dict):
            check_encodable(data)
        return data


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
    except RecursionError:
        raise APIError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    try:
        check_encodable(body)
    except ValueError as e:
        raise APIError(400, str(e), code="invalid_json") from None
    return body


def check_encodable(body: Any) -> None:
    """`ValueError` for a string no UTF-8 text can hold: a lone surrogate (``"\\ud800"`` is a valid JSON escape)."""
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError as e:
        raise ValueError(f"request body has a string that is not valid Unicode ({e.reason})") from None


class BodyLimit:
    """ASGI middleware: a 413 once a request body passes ``max_bytes``, counted while it is read (a declared
    Content-Length is not trusted, only used to refuse early). Raised as an HTTP exception inside the app, so the
    app's handler answers it in the OpenAI error shape."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        size = int(declared) if declared.isdigit() else 0

        async def limited() -> dict[str, Any]:
            nonlocal size
            if size > self.max_bytes:
                raise StarletteHTTPException(413)
            message = await receive()
            size += len(message.get("body", b""))
            if size > self.max_bytes and not declared.isdigit():
                raise StarletteHTTPException(413)
            return message

        await self.app(scope, limited, send)


def check_api_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key")


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's validation error as the OpenAI 400, naming the innermost bad field (``messages[0].role``)."""
    errors = exc.errors()
    error = max(errors, key=lambda e: len(e["loc"]))
    if error["type"] == "json_invalid":
        return APIError(400, f"request body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}",
                        code="invalid_json")
    param = ""
    for part in error["loc"][1:]:  # loc starts with "body"; union members add their type name, left out here
        if isinstance(part, int):
            param += f"[{part}]"
        elif part.isidentifier() and part.islower() and part not in {"str", "int", "float", "bool", "dict", "list"}:
            param += f".{part}" if param else part
    where = f"'{param}'" if param else "request body"
    return APIError(400, f"{where}: {error['msg']}", param=param or None,
                    code="invalid_json" if not param else None)


def arguments_of(call: ToolCallRequest, param: str) -> dict[str, Any]:
    """A request tool call's arguments as a dict; 400 naming the call when they are not a JSON object."""
    try:
        return decode_arguments(call.function.arguments)
    except ArgumentsError as e:
        raise APIError(400, f"tool-call arguments {e}", param=param) from None


def to_langchain_messages(messages: list[ChatMessage]) -> list[BaseMessage]:
    """Validated OpenAI chat messages as LangChain messages; `APIError` (400) naming a bad tool call or tool id."""
    converted: list[BaseMessage] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        content = content_text(message.model_dump(include={"content"}).get("content"))
        if message.role in ("system", "developer"):
            converted.append(SystemMessage(content))
        elif message.role == "user":
            converted.append(HumanMessage(content))
        elif message.role == "assistant":
            calls = [{"name": call.function.name, "id": call.id or new_call_id(), "type": "tool_call",
                      "args": arguments_of(call, f"{param}.tool_calls[{j}].function.arguments")}
                     for j, call in enumerate(message.tool_calls or [])]
            converted.append(AIMessage(content, tool_calls=calls))
        else:
            if not message.tool_call_id:
                raise APIError(400, "a tool message needs a 'tool_call_id' string", param=f"{param}.tool_call_id")
            converted.append(ToolMessage(content, tool_call_id=message.tool_call_id))
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
    than ``max_tokens_limit`` tokens, larger than ``max_body_bytes``, or whose prompt plus ``max_tokens`` exceeds
    the model's context (when the model reports ``context_length``) are refused with a 4xx before any compute. At
    most ``max_concurrency`` model calls run at once; the others wait. A call whose client disconnects stops at its
    next token (for models with a ``cancel`` event, such as `StudentChatModel`), and its slot is freed only then.
    """
    app = FastAPI(title=f"mentor_agents: {model_name}", strict_content_type=False)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.state.requires_api_key = api_key is not None
    add_error_handlers(app, max_body_bytes)
    slots = Slots(max_concurrency)

    async def authorized(request: Request) -> None:
        check_api_key(request, api_key)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict[str, Any]:
        return {"object": "list",
                "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "mentor_agents"}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        if body.model != model_name:
            raise APIError(404, f"model {body.model!r} is not served here; this server serves {model_name!r}",
                           param="model", code="model_not_found")
        call = await model_call(chat_model, body, max_tokens_limit)
        head = {"id": "chatcmpl-" + uuid.uuid4().hex, "created": int(time.time()), "model": model_name}
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(stream_events(request, call, slots, head, include_usage),
                                     media_type="text/event-stream")
        return await completion(request, call, slots, head)

    return app


def add_error_handlers(app: FastAPI, max_body_bytes: int) -> None:
    """Answer `APIError`, invalid requests and HTTP errors (404, 413) in the OpenAI error shape."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 413: "body_too_large"}.get(exc.status_code)
        message = f"request body exceeds the limit of {max_body_bytes} bytes" if code == "body_too_large" \
            else str(exc.detail)
        return error_response(exc.status_code, message, code=code)


class Slots:
    """At most ``n`` model calls at once. A call keeps its slot until it returns, even once its client is gone, and
    stays referenced until then."""

    def __init__(self, n: int):
        self.semaphore = asyncio.Semaphore(n)
        self.running: set[asyncio.Task] = set()

    def run(self, work: Callable[[], Awaitable[Any]], cancel: threading.Event) -> asyncio.Task:
        """Run ``work`` once a slot is free; skipped (`ClientGone`) when ``cancel`` was set while it waited."""
        async def run() -> Any:
            async with self.semaphore:
                if cancel.is_set():
                    raise ClientGone
                return await work()

        task = asyncio.create_task(run())
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        return task


@dataclass
class ModelCall:
    """One request's model call: the model configured and bound to the request's tools, its messages, the call's
    keyword arguments (``stop``) and the event that stops it."""

    model: Any
    messages: list[BaseMessage]
    kwargs: dict[str, Any]
    cancel: threading.Event


async def model_call(chat_model: BaseChatModel, body: ChatCompletionRequest, max_tokens_limit: int) -> ModelCall:
    """The model call ``body`` asks for; `APIError` (400) for settings this server refuses or a prompt too long."""
    messages = to_langchain_messages(body.messages)
    if body.n not in (None, 1):
        raise APIError(400, "only n=1 is supported", param="n")
    cancel = threading.Event()
    settings: dict[str, Any] = {"cancel": cancel}
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, name)
        if value is not None and value > max_tokens_limit:
            raise APIError(400, f"'{name}' is {value}; this server allows at most {max_tokens_limit}", param=name)
        if value is not None:
            settings["max_tokens"] = value
    if body.temperature is not None:
        settings["temperature"] = body.temperature
    call_kwargs = {"stop": [body.stop] if isinstance(body.stop, str) else body.stop} if body.stop else {}
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools or []]
    model: Any = configured(chat_model, settings)
    await check_context(model, messages, tools)
    if tools:
        tool_choice = body.tool_choice.model_dump() if isinstance(body.tool_choice, BaseModel) else body.tool_choice
        model = model.bind_tools(tools, **({} if tool_choice is None else {"tool_choice": tool_choice}))
    return ModelCall(model, messages, call_kwargs, cancel)


async def completion(request: Request, call: ModelCall, slots: Slots, head: dict[str, Any]) -> Any:
    """The ``chat.completion`` answer of ``call`` (a 500 in the OpenAI error shape when the model fails)."""
    task = slots.run(lambda: call.model.ainvoke(call.messages, **call.kwargs), call.cancel)
    watcher = asyncio.create_task(cancel_on_disconnect(request, call.cancel))
    try:
        message = await asyncio.shield(task)
    except Exception as e:
        return model_error(e)
    finally:
        watcher.cancel()
        call.cancel.set()
    tool_calls = openai_tool_calls(message)
    text = message.text
    reply: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    return {
        **head, "object": "chat.completion",
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": openai_usage(message),
    }


async def stream_events(request: Request, call: ModelCall, slots: Slots, head: dict[str, Any],
                        include_usage: bool) -> AsyncIterator[str]:
    """The server-sent events of ``call`` streamed: a role delta, content and tool-call deltas, the finish reason,
    the usage when asked, ``[DONE]``; a model failure is reported in-band."""
    def event(delta: dict[str, Any] | None, finish_reason: str | None = None, **extra: Any) -> str:
        chunk = {**head, "object": "chat.completion.chunk",
                 "choices": [] if delta is None else
                 [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}
        return f"data: {json.dumps(chunk)}\n\n"

    chunks: asyncio.Queue = asyncio.Queue()

    async def produce() -> None:
        async for chunk in call.model.astream(call.messages, **call.kwargs):
            chunks.put_nowait(chunk)
            if call.cancel.is_set():
                break

    task = slots.run(produce, call.cancel)
    # None ends the stream; an exception is reported in-band.
    task.add_done_callback(lambda done: chunks.put_nowait(None if done.cancelled() else done.exception()))
    watcher = asyncio.create_task(cancel_on_disconnect(request, call.cancel))
    try:
        yield event({"role": "assistant", "content": ""})
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        called = False
        while (chunk := await chunks.get()) is not None:
            if isinstance(chunk, Exception):
                # The status line has gone out already: report the failure in-band, as OpenAI does.
                yield f"data: {json.dumps(model_error_body(chunk))}\n\n"
                yield "data: [DONE]\n\n"
                return
            for delta in chunk_deltas(chunk):
                called = called or "tool_calls" in delta
                yield event(delta)
            if getattr(chunk, "usage_metadata", None):
                usage = {k: usage[k] + v for k, v in openai_usage(chunk).items()}
        yield event({}, "tool_calls" if called else "stop")
        if include_usage:
            yield event(None, usage=usage)
        yield "data: [DONE]\n\n"
    finally:
        watcher.cancel()
        call.cancel.set()


class ClientGone(Exception):
    """The client disconnected before its model call got a slot; the call is skipped."""


async def cancel_on_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set ``cancel`` once the client of ``request`` disconnects (its body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.set()


async def check_context(model: Any, messages: list[BaseMessage], tools: list[dict[str, Any]]) -> None:
    """400 ``context_length_exceeded`` when the prompt plus the tokens to generate exceed the model's context."""
    limit = getattr(model, "context_length", None)
    if not limit:
        return
    max_tokens = next((getattr(model, f) for f in SETTING_FIELDS["max_tokens"] if f in type(model).model_fields), 0)
    prompt = await asyncio.to_thread(model.get_num_tokens_from_messages, messages, tools)
    if prompt + (max_tokens or 0) > limit:
        raise APIError(400, f"this model's context is {limit} tokens, but the messages take {prompt} and "
                            f"max_tokens asks for {max_tokens} more; shorten the messages or lower max_tokens",
                       param="messages", code="context_length_exceeded")


SETTING_FIELDS = {"max_tokens": ("max_tokens", "max_new_tokens"), "temperature": ("temperature",),
                  "cancel": ("cancel",)}
"""The chat-model fields that take each request setting: ChatOpenAI has ``max_tokens``, local models
``max_new_tokens``; a ``cancel`` event stops a local model's generation once its client is gone."""


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


def serve_student(student: DistilledStudent, host: str = "127.0.0.1", port: int = 8000,
                  api_key: str | None = None) -> None:
    """Serve what `distill` returned as an OpenAI-compatible endpoint (model id ``mentor/<method>``) until
    interrupted; a saved student is served by ``mentor serve DIR``."""
    serve(create_app(student.as_chat_model(), f"mentor/{student.method}", api_key=api_key), host=host, port=port)
