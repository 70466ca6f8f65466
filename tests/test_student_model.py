"""StudentChatModel inside real LangGraph graphs with a tiny random Qwen2: tool calls, invalid calls, async,
token-exact rollout recording and swap_model."""

from __future__ import annotations

import asyncio

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from forcing import ForceText
from transformers import LogitsProcessorList

from mentor_agents.integrations.langgraph import StudentChatModel, TokenRecorder, rollout_from_run, swap_model
from mentor_agents.demo.calculator import SYSTEM_PROMPT, TOOLS, ScriptedCalculatorTeacher, build_agent
from mentor_agents.integrations.langgraph.student_model import openai_messages
from mentor_agents.tokens import NotPrefixPreservingError, TokenRecord, stitch

torch.set_num_threads(1)

QUESTION = "What is 3 plus 2?"
CALL_TEXT = '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 2}}\n</tool_call>'
ANSWER_TEXT = "The sum is 5. Answer: 5"


def forced_student(tiny, **fields) -> StudentChatModel:
    model, tokenizer = tiny
    processor = LogitsProcessorList([ForceText(tokenizer, CALL_TEXT, ANSWER_TEXT)])
    return StudentChatModel(model=model, tokenizer=tokenizer, logits_processor=processor, max_new_tokens=64, **fields)


def test_random_student_in_create_agent_does_not_crash(tiny):
    model, tokenizer = tiny
    student = StudentChatModel(model=model, tokenizer=tokenizer, do_sample=True, max_new_tokens=24)
    agent = build_agent(student, "create_agent")
    torch.manual_seed(0)
    for _ in range(3):
        out = agent.invoke({"messages": [("user", QUESTION)]})
        last = out["messages"][-1]
        assert isinstance(last, AIMessage) and last.usage_metadata["output_tokens"] <= 24
        assert last.usage_metadata["input_tokens"] > 100  # the system prompt and 12 tool schemas were rendered


def test_broken_json_becomes_invalid_tool_call(tiny):
    model, tokenizer = tiny
    broken = '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": \n</tool_call>'
    processor = LogitsProcessorList([ForceText(tokenizer, broken, ANSWER_TEXT)])
    student = StudentChatModel(model=model, tokenizer=tokenizer, logits_processor=processor, max_new_tokens=64)
    out = build_agent(student, "create_agent").invoke({"messages": [("user", QUESTION)]})
    last = out["messages"][-1]
    assert last.tool_calls == [] and len(last.invalid_tool_calls) == 1
    assert last.invalid_tool_calls[0]["id"].startswith("call_") and last.invalid_tool_calls[0]["error"]
    rollout = rollout_from_run(out)
    assert rollout.invalid_calls and rollout.tool_calls == []


def test_unknown_tool_is_invalid(tiny):
    model, tokenizer = tiny
    call = '<tool_call>\n{"name": "launch_rocket", "arguments": {}}\n</tool_call>'
    processor = LogitsProcessorList([ForceText(tokenizer, call, ANSWER_TEXT)])
    student = StudentChatModel(model=model, tokenizer=tokenizer, logits_processor=processor, max_new_tokens=64)
    message = student.bind_tools(TOOLS).invoke([HumanMessage(QUESTION)])
    assert message.tool_calls == [] and "launch_rocket" in message.invalid_tool_calls[0]["error"]


@pytest.mark.parametrize("builder", ["create_agent", "stategraph"])
def test_forced_tool_call_is_executed_by_the_graph(tiny, builder):
    out = build_agent(forced_student(tiny), builder).invoke({"messages": [("user", QUESTION)]})
    ai, tool, final = out["messages"][1:]
    assert ai.tool_calls[0]["name"] == "add" and ai.tool_calls[0]["args"] == {"a": 3, "b": 2}
    assert ai.tool_calls[0]["id"].startswith("call_") and ai.response_metadata["finish_reason"] == "tool_calls"
    assert isinstance(tool, ToolMessage) and tool.content == "5" and tool.tool_call_id == ai.tool_calls[0]["id"]
    assert final.content == ANSWER_TEXT and final.usage_metadata["total_tokens"] > 0


def test_tool_choice_none_leaves_text_unparsed(tiny):
    message = forced_student(tiny).bind_tools(TOOLS, tool_choice="none").invoke([HumanMessage(QUESTION)])
    assert message.tool_calls == [] and message.content == CALL_TEXT


def test_tool_choice_name_restricts_calls(tiny):
    message = forced_student(tiny).bind_tools(TOOLS, tool_choice="multiply").invoke([HumanMessage(QUESTION)])
    assert message.tool_calls == [] and "add" in message.invalid_tool_calls[0]["error"]


def test_async_agent_run(tiny):
    agent = build_agent(forced_student(tiny), "create_agent")
    out = asyncio.run(agent.ainvoke({"messages": [("user", QUESTION)]}))
    assert [type(m).__name__ for m in out["messages"]] == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]


def test_rollout_tokens_are_exact_through_create_agent(tiny):
    _, tokenizer = tiny
    student = forced_student(tiny, record_tokens=True)
    recorder = TokenRecorder()
    out = build_agent(student, "create_agent").invoke(
        {"messages": [("user", QUESTION)]}, config={"callbacks": [recorder]})
    assert len(recorder.records) == 2
    prompt, completion, mask, logprobs, _ = stitch(recorder.records)

    # Re-render the final conversation (the agent adds the system prompt to every model call) with the same tools.
    schemas = student.bind_tools(TOOLS).kwargs["tools"]
    messages = openai_messages([SystemMessage(SYSTEM_PROMPT), *out["messages"]])
    full = tokenizer.apply_chat_template(messages, tools=schemas, tokenize=True, return_dict=True)["input_ids"]
    assert full[: len(prompt) + len(completion)] == prompt + completion
    assert tokenizer.decode(full[len(prompt) + len(completion):]) == "\n"  # the template's newline after the turn

    generated = [t for t, m in zip(completion, mask) if m]
    assert generated == recorder.records[0].generated_ids + recorder.records[1].generated_ids
    assert tokenizer.decode(generated).startswith(CALL_TEXT) and "<tool_response>\n5\n</tool_response>" in (
        tokenizer.decode([t for t, m in zip(completion, mask) if not m]))
    assert all(lp == 0.0 for lp, m in zip(logprobs, mask) if not m)
    # The model's own log-probabilities (the processor only chose the tokens), as a training loop needs them.
    assert all(-30 < lp < 0 for lp, m in zip(logprobs, mask) if m)

    rollout = rollout_from_run(out, recorder.records, task_id="t1")
    assert rollout.completion_ids == completion and rollout.completion_mask == mask and rollout.prompt_ids == prompt
    assert rollout.final_answer == ANSWER_TEXT and [c.name for c in rollout.tool_calls] == ["add"]


def test_sampled_logprobs_match_the_model(tiny):
    model, tokenizer = tiny
    student = StudentChatModel(model=model, tokenizer=tokenizer, do_sample=True, temperature=0.7, max_new_tokens=8)
    recorder = TokenRecorder()
    torch.manual_seed(1)
    student.invoke([HumanMessage(QUESTION)], config={"callbacks": [recorder]})
    (record,) = recorder.records
    ids = torch.tensor([record.prompt_ids + record.generated_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(record.prompt_ids) - 1:-1] / 0.7
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(record.generated_ids)[:, None])[:, 0]
    assert torch.allclose(expected, torch.tensor(record.logprobs), atol=1e-4)


def test_concurrent_runs_keep_their_own_records(tiny):
    agent = build_agent(forced_student(tiny), "create_agent")
    recorders = [TokenRecorder(), TokenRecorder()]
    questions = [QUESTION, "What is 3 plus 2? Please."]

    async def main():
        await asyncio.gather(*(agent.ainvoke({"messages": [("user", q)]}, config={"callbacks": [r]})
                               for q, r in zip(questions, recorders)))

    asyncio.run(main())
    for question, recorder in zip(questions, recorders):
        assert len(recorder.records) == 2
        assert question in tiny[1].decode(recorder.records[0].prompt_ids)


def test_record_tokens_without_recorder_is_an_error(tiny):
    with pytest.raises(ValueError, match="TokenRecorder"):
        forced_student(tiny, record_tokens=True).invoke([HumanMessage(QUESTION)])


def test_stitch_rejects_a_prompt_that_rewrites_history():
    first = TokenRecord([1, 2, 3], [4, 5, 9], [-0.1, -0.2, -0.3], (9,))
    rewritten = TokenRecord([1, 2, 3, 4, 6, 9, 7, 8], [10, 9], [-0.4, -0.5], (9,))
    with pytest.raises(NotPrefixPreservingError, match="model call 1"):
        stitch([first, rewritten])
    # Lenient: keep the sampled turn, skip its re-rendering up to the end token, insert the rest.
    assert stitch([first], strict=True).rerendered_turns == 0
    prompt, completion, mask, logprobs, rerendered = stitch([first, rewritten], strict=False)
    assert rerendered == 1 and prompt == [1, 2, 3] and completion == [4, 5, 9, 7, 8, 10, 9] and mask == [1, 1, 1, 0, 0, 1, 1]
    assert logprobs == [-0.1, -0.2, -0.3, 0.0, 0.0, -0.4, -0.5]
    with pytest.raises(NotPrefixPreservingError):
        stitch([first, TokenRecord([1, 7, 3, 4, 5, 9], [9], [0.0], (9,))], strict=False)


@pytest.mark.parametrize("builder", ["create_agent", "react", "stategraph"])
def test_swap_model_keeps_the_teacher_graph(tiny, builder):
    teacher = build_agent(ScriptedCalculatorTeacher(), builder)
    nodes_before = {name: spec.runnable for name, spec in teacher.builder.nodes.items()}
    swapped = swap_model(teacher, forced_student(tiny))
    assert swapped is not teacher and set(swapped.builder.nodes) == set(teacher.builder.nodes)
    assert {name: spec.runnable for name, spec in teacher.builder.nodes.items()} == nodes_before

    out = swapped.invoke({"messages": [("user", QUESTION)]})
    assert out["messages"][-1].content == ANSWER_TEXT and out["messages"][2].content == "5"
    teacher_out = teacher.invoke({"messages": [("user", "What is (3 plus 2) times 4?")]})
    assert teacher_out["messages"][-1].content == "Answer: 20"  # still the scripted teacher, two tool turns

    recorder = TokenRecorder()
    swapped.invoke({"messages": [("user", QUESTION)]}, config={"callbacks": [recorder]})
    assert SYSTEM_PROMPT in tiny[1].decode(recorder.records[0].prompt_ids)  # same prompt
    assert '"name": "modulo"' in tiny[1].decode(recorder.records[0].prompt_ids)  # same tools


def test_swap_model_keeps_the_bound_recursion_limit():
    from langgraph.errors import GraphRecursionError

    two_turns = build_agent(ScriptedCalculatorTeacher()).with_config(recursion_limit=4)
    swapped = swap_model(two_turns, ScriptedCalculatorTeacher())
    assert swapped.invoke({"messages": [("user", "What is 3 plus 2?")]})["messages"][-1].content == "Answer: 5"
    with pytest.raises(GraphRecursionError):  # three model turns do not fit in four supersteps
        swapped.invoke({"messages": [("user", "What is (3 plus 2) times 4?")]})


def test_swap_model_needs_a_model_in_the_graph():
    from langgraph.graph import END, START, MessagesState, StateGraph

    graph = StateGraph(MessagesState)
    graph.add_node("echo", lambda state: {"messages": []})
    graph.add_edge(START, "echo")
    graph.add_edge("echo", END)
    with pytest.raises(ValueError, match="no chat model"):
        swap_model(graph.compile(), ScriptedCalculatorTeacher())
