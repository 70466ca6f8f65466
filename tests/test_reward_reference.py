"""The reward against the reference code's own scores: 400 cases scored by choics2623/MENTOR-RL (commit a158591, its
answer judge replaced by each case's verdict), data in ``tests/data/mentor-reward-reference/`` (README there).

Each case goes the trainer's way: the student's turns are generated text in its tool-call format (Hermes
``<tool_call>`` JSON, cut-off JSON for a malformed call), parsed by `turn_message` (what `StudentChatModel` returns,
with the agent's 12 calculator tools offered), turned into a `Rollout` by `rollout_from_run`, and scored by
`Reward`. The answer gate reads our text answer where the reference reads ``\\boxed{}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from forcing import ForceText
from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from transformers import LogitsProcessorList

from mentor_agents.demo.calculator import TOOLS, ScriptedCalculatorTeacher, build_agent
from mentor_agents.integrations.langgraph.rollouts import run_rollouts
from mentor_agents.integrations.langgraph.student_model import rollout_from_run, turn_message
from mentor_agents.references import CallReference, RewardReference
from mentor_agents.rewards import REWARD_NAMES, Reward
from mentor_agents.rollouts import Rollout
from mentor_agents.tasks import NumericMatch
from mentor_agents.training import TrainConfig

CASES = [json.loads(line) for line in
         (Path(__file__).parent / "data" / "mentor-reward-reference" / "cases.jsonl").read_text().splitlines()]
SCHEMAS = [convert_to_openai_tool(t) for t in TOOLS]
QUESTION, ANSWER = "What is 6 times 7?", "The answer is 42."


def call_text(call: dict, i: int) -> str:
    body = json.dumps({"name": call["name"], "arguments": {"a": i, "b": 2}})
    if not call["well_formed"]:
        body = body[: body.index('"b"')]  # generation stopped inside the JSON
    return f"<tool_call>\n{body}\n</tool_call>"


def student_messages(case: dict, tokenizer) -> list[BaseMessage]:
    """The run as the graph's state holds it: each turn parsed as the student chat model parses it, a tool result
    for each valid call, and the final turn (none when the turn limit stopped the run)."""
    messages: list[BaseMessage] = [HumanMessage(QUESTION)]
    for turn in case["student_turns"]:
        message = turn_message("\n".join(call_text(c, i) for i, c in enumerate(turn)), tokenizer, SCHEMAS)
        messages.append(message)
        messages += [ToolMessage("42", tool_call_id=c["id"], name=c["name"]) for c in message.tool_calls]
    if case["cut_by"] == "turn_limit":
        return messages
    if case["cut_by"] == "token_budget":
        return [*messages, turn_message(ANSWER[:8], tokenizer, SCHEMAS, stopped=False)]
    return [*messages, turn_message(ANSWER if case["has_final_answer"] else "", tokenizer, SCHEMAS)]


def reference_of(case: dict) -> RewardReference:
    return RewardReference(
        task_id="case", task_input=QUESTION, tools=SCHEMAS, teacher_tools=sorted(set(case["teacher_tools"])),
        teacher_calls=[CallReference(name=name, args={}) for name in case["teacher_tools"]],
        teacher_answer=ANSWER, ground_truth=42,
    )


def verdict(correct: bool):
    return lambda answer, truth: correct


@pytest.fixture(scope="module")
def rollouts(tiny) -> list[Rollout]:
    _, tokenizer = tiny
    return [rollout_from_run({"messages": student_messages(case, tokenizer)}, task_id=f"case-{i}",
                             finished=case["finished"], cut_by=case["cut_by"]) for i, case in enumerate(CASES)]


def test_cases_offer_the_calculator_agents_tools():
    assert len(CASES) == 400
    assert all(case["agent_tools"] == [s["function"]["name"] for s in SCHEMAS] for case in CASES)


def test_the_parse_path_sorts_every_call_as_the_case_says(rollouts):
    for case, rollout in zip(CASES, rollouts):
        calls = [c for turn in case["student_turns"] for c in turn]
        offered = set(case["agent_tools"])
        assert [c.name for c in rollout.tool_calls] == [
            c["name"] for c in calls if c["well_formed"] and c["name"] in offered]
        assert [c.name for c in rollout.invalid_calls if c.kind == "unknown_tool"] == [
            c["name"] for c in calls if c["well_formed"] and c["name"] not in offered]
        assert sum(c.kind == "malformed" and c.name is None for c in rollout.invalid_calls) == sum(
            not c["well_formed"] for c in calls)
    kinds = [c.kind for r in rollouts for c in r.invalid_calls]
    assert kinds.count("unknown_tool") > 100 and kinds.count("malformed") > 20  # both kinds are exercised


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_every_case_scores_as_the_reference_code(name, rollouts):
    wrong = []
    for i, (case, rollout) in enumerate(zip(CASES, rollouts)):
        result = Reward(name=name, verify=verdict(case["correct"]))(rollout, reference_of(case))
        if abs(result.value - case["reference_reward"][name]) > 1e-9:
            wrong.append(f"case {i}: ours {result.value} ({result.reason}), reference {case['reference_reward'][name]}")
    assert not wrong, f"{len(wrong)} of {len(CASES)} differ:\n" + "\n".join(wrong[:10])


def test_an_unknown_tool_costs_the_h_term_through_the_langgraph_agent(tiny):
    """A case from the data run for real: in one turn the student calls python (which the agent lacks) and power,
    the graph runs power, and the student answers. Reference: mentor 1.0 (S = T = {power}, H = 0), f1 1.0."""
    model, tokenizer = tiny
    case = next(c for c in CASES if c["correct"] and c["finished"] and c["has_final_answer"]
                and c["teacher_tools"] == ["power"] and c["student_turns"] == [[
                    {"name": "python", "well_formed": True}, {"name": "power", "well_formed": True}]])
    first = ('<tool_call>\n{"name": "python", "arguments": {"code": "2**3"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "power", "arguments": {"base": 2, "exponent": 3}}\n</tool_call>')
    forced = LogitsProcessorList([ForceText(tokenizer, first, "2 to the power of 3 is 8. Answer: 8")])
    reference = reference_of(case).model_copy(update={"task_input": "What is 2 to the power of 3?",
                                                      "ground_truth": 8, "verifier": NumericMatch()})
    config = TrainConfig(output_dir="unused", max_new_tokens=200, max_turns=3)
    [rollout] = run_rollouts(build_agent(ScriptedCalculatorTeacher(), "create_agent"), [reference], model, tokenizer,
                             config, logits_processor=forced)
    assert rollout.finished and [c.name for c in rollout.tool_calls] == ["power"]
    assert [(c.name, c.kind) for c in rollout.invalid_calls] == [("python", "unknown_tool")]
    assert {"role": "tool", "content": "8"}.items() <= next(m for m in rollout.messages if m.get("name") == "power").items()
    for name in REWARD_NAMES:
        result = Reward(name=name)(rollout, reference)
        assert result.value == pytest.approx(case["reference_reward"][name], abs=1e-9), name
    assert Reward()(rollout, reference).reason == (
        "correct; tool set matches teacher; called unknown tool python")
