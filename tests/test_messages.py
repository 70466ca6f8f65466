"""The one reading of message content, tool-call arguments and tool schemas (`mentor_agents.messages`)."""

import pytest

from mentor_agents.messages import ArgumentsError, Message, ToolCall, content_text, decode_arguments, tool_names


def test_content_text():
    assert content_text(None) == "" and content_text("hi") == "hi"
    assert content_text([{"type": "text", "text": "a"}, "b", {"text": "c"}]) == "abc"
    assert content_text([{"type": "image_url", "image_url": {"url": "x"}}]) == '[{"type": "image_url", "image_url": {"url": "x"}}]'
    assert content_text({"rows": 2}) == '{"rows": 2}'


@pytest.mark.parametrize("arguments, expected", [(None, {}), ("", {}), ("  ", {}), ('{"a": 1}', {"a": 1}),
                                                 ({"a": 1}, {"a": 1})])
def test_decode_arguments(arguments, expected):
    assert decode_arguments(arguments) == expected


@pytest.mark.parametrize("arguments, error", [("oops", "not valid JSON: Expecting value at line 1 column 1"),
                                              ("[1]", "must be a JSON object, got list"), (5, "got int"),
                                              ("[" * 100_000, "not valid JSON")])
def test_decode_arguments_says_why_it_refuses(arguments, error):
    with pytest.raises(ArgumentsError, match=error.replace("[", r"\[")):
        decode_arguments(arguments)


def test_tool_names_of_openai_and_bare_schemas():
    tools = [{"type": "function", "function": {"name": "add"}}, {"name": "sub"}, {"type": "web_search"}]
    assert tool_names(tools) == {"add", "sub"} and tool_names(None) == set()


def test_message_calls():
    message = Message.model_validate({"role": "assistant", "content": None, "extra": 1, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]})
    assert message.text == "" and message.calls() == [ToolCall(id="c1", name="add", args={"a": 1})]
    with pytest.raises(ArgumentsError):
        Message(role="assistant", tool_calls=[{"function": {"name": "add", "arguments": "{"}}]).calls()
