"""Fuzzing the served student's HTTP surface with hypothesis: OpenAI-shaped requests with every field bent, arbitrary
JSON, arbitrary bytes, and arbitrary paths and methods, against the real app on loopback with the tiny student.
Nothing may answer 5xx except a model error injected on purpose, and the server stays healthy."""

import json
from collections import Counter

import httpx
import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from mentor_agents.integrations.langgraph import StudentChatModel
from mentor_agents.integrations.openai.server import create_app, running_server

torch.set_num_threads(1)

MODEL, KEY, BOOM = "fuzz-student", "fuzz-key", "__inject_model_error__"
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class FaultyStudent(StudentChatModel):
    """The real tiny student, except that a user message equal to ``BOOM`` makes the model call fail."""

    def _chat(self, messages, *args, **kwargs):
        if any(m.type == "human" and m.content == BOOM for m in messages):
            raise RuntimeError("injected model failure")
        return super()._chat(messages, *args, **kwargs)


@pytest.fixture(scope="module")
def live(tiny):
    """The real app with the tiny student on a loopback port; its base URL (without ``/v1``)."""
    model, tokenizer = tiny
    student = FaultyStudent(model=model, tokenizer=tokenizer, model_name=MODEL, max_new_tokens=4)
    app = create_app(student, MODEL, api_key=KEY, max_body_bytes=20_000, max_tokens_limit=8)
    with running_server(app) as url:
        base = url.removesuffix("/v1")
        yield base
        assert httpx.get(f"{base}/health", timeout=10).json()["status"] == "ok"


@pytest.fixture(scope="module")
def server(live):
    with httpx.Client(base_url=live, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def openapi(live):
    """The server's own /openapi.json, with wrong-typed (negative) cases generated as well as valid ones."""
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return schema


openapi_schema = schemathesis.pytest.from_fixture("openapi")


def mostly(good, bad):
    """``good`` about four times in five, else ``bad``: most requests get past validation to the model."""
    return st.integers(0, 4).flatmap(lambda pick: good if pick else bad)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
text = st.text(max_size=40) | st.sampled_from(["", "3 plus 2?", BOOM, "<tool_call>", "\x00", "🙂" * 5, "\ud800"])
tool_schema = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries({
    "name": st.sampled_from(["add", "multiply"]) | st.text(max_size=8),
    "description": text,
    "parameters": st.just({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                           "required": ["a", "b"]}) | json_values,
})})
tool_call = st.fixed_dictionaries({
    "id": st.text(max_size=8) | st.none(), "type": st.just("function"),
    "function": st.fixed_dictionaries({"name": st.sampled_from(["add", "multiply"]) | json_scalars,
                                       "arguments": st.just('{"a": 1, "b": 2}') | text | json_values}),
}) | json_values
content = mostly(text, st.none() | st.lists(mostly(st.fixed_dictionaries({"type": st.just("text"), "text": text}),
                                                  json_values), max_size=3) | json_values)
message = st.fixed_dictionaries(
    {"role": mostly(st.sampled_from(["system", "developer", "user", "user", "assistant", "tool"]), json_scalars)},
    optional={"content": content, "tool_calls": mostly(st.lists(tool_call, max_size=2), json_values),
              "tool_call_id": st.text(max_size=8) | json_scalars, "name": text},
)
request = st.fixed_dictionaries(
    {"model": mostly(st.just(MODEL), json_scalars),
     "messages": mostly(st.lists(message, min_size=1, max_size=4), json_values)},
    optional={
        "tools": mostly(st.lists(tool_schema, max_size=2), json_values),
        "tool_choice": st.sampled_from(["auto", "none", "required"]) | json_values,
        "max_tokens": mostly(st.integers(-2, 12), json_scalars),
        "max_completion_tokens": mostly(st.integers(-2, 12), json_scalars),
        "temperature": mostly(st.floats(-1, 3), json_scalars), "stream": mostly(st.booleans(), json_scalars),
        "stream_options": st.just({"include_usage": True}) | json_values, "stop": text | json_values,
        "n": mostly(st.just(1), st.integers(0, 3) | json_scalars), "top_p": json_scalars, "user": text,
    },
)
STATUSES: Counter = Counter()
"""Statuses of the OpenAI-shaped requests, to check that the fuzzing reached the model and not only the validation."""

auth = st.sampled_from([{"Authorization": f"Bearer {KEY}"}] * 4 + [{}, {"Authorization": "Bearer nope"},
                                                                   {"Authorization": KEY}])


def injected(body) -> bool:
    return BOOM in json.dumps(body)


def post(client: httpx.Client, body: bytes, headers: dict) -> tuple[int, str]:
    with client.stream("POST", "/v1/chat/completions", content=body,
                       headers={"Content-Type": "application/json", **headers}) as response:
        return response.status_code, response.read().decode("utf-8", "replace")


def check(status: int, text: str, may_fail: bool) -> None:
    if status >= 500:
        assert may_fail and json.loads(text)["error"]["code"] == "model_error", (status, text[:500])
    elif text.startswith("data: "):  # a stream: every event is JSON, it ends with [DONE], errors only in-band
        events = [line[6:] for line in text.split("\n\n") if line]
        assert events[-1] == "[DONE]", text[-300:]
        for event in events[:-1]:
            if "error" in json.loads(event):
                assert may_fail, event
    else:
        body = json.loads(text)
        assert ("error" in body) == (status >= 400), text[:500]


@FUZZ
@given(body=request, headers=auth)
def test_openai_shaped_requests_never_5xx(server, body, headers):
    status, text = post(server, json.dumps(body).encode(), headers)
    STATUSES[status] += 1
    check(status, text, injected(body))


ADD = {"type": "function", "function": {"name": "add", "description": "Add.", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}
FULL = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You add."},
        {"role": "user", "content": [{"type": "text", "text": "3 plus 2?"}], "name": "u"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 3, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ],
    "tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "add"}}, "max_tokens": 2,
    "max_completion_tokens": 2, "temperature": 0.5, "top_p": 1.0, "stop": ["\n\n"], "n": 1, "stream": True,
    "stream_options": {"include_usage": True}, "user": "fuzz",
}
"""A valid request that sets every field the server reads, at every depth."""


def field_paths(value, path=()):
    yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from field_paths(child, (*path, key))


def with_field(body, path, value):
    """A deep copy of ``body`` with the field at ``path`` set to ``value`` (or removed, for ``REMOVE``)."""
    body = json.loads(json.dumps(body))
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    if value is REMOVE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return body


REMOVE = object()
wrong = json_scalars | json_values | st.sampled_from([5, [1], "x", {"function": None}, "\ud800", -1, 10**30, REMOVE])


@pytest.mark.parametrize("path", [p for p in field_paths(FULL) if p], ids=lambda p: ".".join(map(str, p)))
@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(value=wrong, stream=st.booleans())
def test_a_wrong_type_at_any_field_is_a_4xx_or_an_answer(server, path, value, stream):
    """Each field of a full request, at every depth, replaced by a value of another type or removed: a 400 in the
    OpenAI shape or an answer, never a 5xx (the general request strategy above rarely reaches one bad field)."""
    body = with_field(dict(FULL, stream=stream), path, value)
    status, text = post(server, json.dumps(body).encode(), {"Authorization": f"Bearer {KEY}"})
    STATUSES[status] += 1
    check(status, text, injected(body))


@FUZZ
@given(body=json_values)
def test_arbitrary_json_bodies_are_refused_cleanly(server, body):
    status, text = post(server, json.dumps(body).encode(), {"Authorization": f"Bearer {KEY}"})
    assert 400 <= status < 500, (status, text[:300])
    assert json.loads(text)["error"]["message"]


@FUZZ
@given(body=st.binary(max_size=400) | st.just(b"{" * 5000) | st.just(b"[" * 19_000)
       | st.just(b'{"model": "' + b"x" * 30_000 + b'"}'))
def test_arbitrary_bytes_are_refused_cleanly(server, body):
    status, text = post(server, body, {"Authorization": f"Bearer {KEY}"})
    assert 400 <= status < 500, (status, text[:300])


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       path=st.sampled_from(["/health", "/v1/models", "/v1/chat/completions", "/openapi.json", "/docs", "/v1"])
       | st.text("abvz019/._-~:@!$&'()*+,;=", max_size=20).map(lambda p: "/" + p),
       headers=auth)
def test_any_route_and_method_answers_below_500(server, method, path, headers):
    response = server.request(method, path, headers=headers, content=b"{}")
    assert response.status_code < 500, (method, path, response.status_code, response.text[:300])


def test_the_openapi_schema_describes_the_request_body(server):
    body = server.get("/openapi.json").json()["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/ChatCompletionRequest")


@openapi_schema.include(method="POST").parametrize()
@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_cases_from_the_real_schema_never_5xx(case, live):
    """Schemathesis cases from the served schema, valid and wrong-typed: 4xx in the OpenAI shape or an answer."""
    response = case.call(base_url=live, headers={"Authorization": f"Bearer {KEY}"})
    STATUSES[response.status_code] += 1
    check(response.status_code, response.text, BOOM in str(case.body))


def test_still_serving_after_the_fuzzing(server):
    assert STATUSES[200] >= 10 and STATUSES[400] >= 10 and STATUSES[401] >= 1, STATUSES
    status, text = post(server, json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode(),
                        {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and json.loads(text)["choices"][0]["message"]["role"] == "assistant", STATUSES
    status, text = post(server, json.dumps({"model": MODEL, "messages": [{"role": "user", "content": BOOM}]}).encode(),
                        {"Authorization": f"Bearer {KEY}"})
    assert status == 500 and json.loads(text)["error"]["code"] == "model_error"
