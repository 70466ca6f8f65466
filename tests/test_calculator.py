"""The calculator domain: tools, seeded task splits, and the scripted teacher solving every split through real graphs."""

import pytest
from langchain_core.messages import HumanMessage, ToolMessage

from mentor_agents.demo.calculator import (
    SYSTEM_PROMPT,
    TOOLS,
    ScriptedCalculatorTeacher,
    build_agent,
    make_tasks,
)
from mentor_agents.tasks import NumericMatch

MENTOR_TOOLS = ["add", "subtract", "multiply", "divide", "sum_numbers", "floor", "ceil", "round_number", "power",
                "sqrt", "abs_value", "modulo"]


def test_the_twelve_tools_compute():
    tools = {t.name: t for t in TOOLS}
    assert list(tools) == MENTOR_TOOLS
    assert tools["add"].invoke({"a": 2, "b": 3}) == 5
    assert tools["add"].invoke({"a": 0.1, "b": 0.2}) == 0.3
    assert tools["subtract"].invoke({"a": 2, "b": 5}) == -3
    assert tools["multiply"].invoke({"a": 2.5, "b": 4}) == 10
    assert tools["divide"].invoke({"a": 7, "b": 2}) == 3.5
    assert tools["sum_numbers"].invoke({"numbers": [1, 2, 3.5]}) == 6.5
    assert tools["floor"].invoke({"x": -1.5}) == -2
    assert tools["ceil"].invoke({"x": 1.2}) == 2
    assert tools["round_number"].invoke({"number": 3.14159, "ndigits": 2}) == 3.14
    assert tools["round_number"].invoke({"number": 2.6}) == 3
    assert tools["power"].invoke({"base": 2, "exponent": 10}) == 1024
    assert tools["sqrt"].invoke({"x": 16}) == 4
    assert tools["abs_value"].invoke({"x": -7}) == 7
    assert tools["modulo"].invoke({"a": 17, "b": 5}) == 2
    for t in TOOLS:
        assert t.description and all(p.get("description") for p in t.args.values()), t.name


@pytest.mark.parametrize("name,args,expected", [
    ("divide", {"a": 1, "b": 0}, "cannot divide 1 by zero"),
    ("modulo", {"a": 1, "b": 0}, "cannot take 1 modulo zero"),
    ("sqrt", {"x": -4}, "cannot take the square root of the negative number -4"),
    ("power", {"base": -8, "exponent": 0.5}, "is not a real number"),
])
def test_bad_input_becomes_an_error_tool_message(name, args, expected):
    tool = next(t for t in TOOLS if t.name == name)
    message = tool.invoke({"name": name, "args": args, "id": "call_1", "type": "tool_call"})
    assert isinstance(message, ToolMessage) and message.status == "error" and expected in message.content


def test_make_tasks_is_seeded_with_unique_stable_ids():
    first, again = make_tasks(40, "train", seed=3), make_tasks(40, "train", seed=3)
    assert [t.model_dump() for t in first] == [t.model_dump() for t in again]
    assert [t.id for t in first] == [f"train-3-{i}" for i in range(40)]
    assert len({t.input for t in first}) == 40
    assert [t.input for t in make_tasks(40, "train", seed=4)] != [t.input for t in first]
    assert all(isinstance(t.verifier, NumericMatch) and t.ground_truth is not None for t in first)
    assert make_tasks(5, "train", seed=3) == first[:5]


def test_train_and_test_never_share_a_problem_and_ood_needs_new_tool_combinations():
    train, test, ood = make_tasks(500, "train"), make_tasks(200, "test"), make_tasks(100, "ood")
    assert not {t.input for t in train} & {t.input for t in test}
    assert not {t.input for t in train} & {t.input for t in make_tasks(200, "test", seed=1)}
    calls_per_task = {len(t.metadata["tools"]) for t in train}
    assert calls_per_task == {1, 2, 3}
    train_combos = {tuple(t.metadata["tools"]) for t in train} | {tuple(t.metadata["tools"]) for t in test}
    ood_combos = {tuple(t.metadata["tools"]) for t in ood}
    assert len(ood_combos) >= 5 and not ood_combos & train_combos
    assert {"sqrt", "round_number"} <= {name for combo in ood_combos for name in combo}


def test_graded_ood_phrasing_reuses_train_combinations_in_new_words_and_dev_is_not_test():
    train, test = make_tasks(500, "train"), make_tasks(200, "test")
    train_combos = {tuple(t.metadata["tools"]) for t in train}
    phrasing = make_tasks(60, "ood_phrasing")
    assert {tuple(t.metadata["tools"]) for t in phrasing} <= train_combos
    assert len({tuple(t.metadata["tools"]) for t in phrasing}) >= 10
    assert {len(t.metadata["tools"]) for t in phrasing} == {1, 2}
    assert not {t.input.split()[0] for t in phrasing} <= {t.input.split()[0] for t in train}
    dev = make_tasks(100, "dev")
    assert not {t.input for t in dev} & {t.input for t in test} and dev[0].id == "dev-0-0"
    assert {tuple(t.metadata["tools"]) for t in dev} <= train_combos


def test_make_tasks_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split must be"):
        make_tasks(3, "validation")
    with pytest.raises(ValueError, match="non-negative"):
        make_tasks(-1)


@pytest.mark.parametrize("split", ["train", "test", "dev", "ood", "ood_phrasing"])
def test_scripted_teacher_solves_50_tasks_through_create_agent(split):
    agent = build_agent(ScriptedCalculatorTeacher())
    for task in make_tasks(50, split):
        state = agent.invoke({"messages": [("user", task.input)]})
        messages = state["messages"]
        assert task.verdict(messages[-1].content) == "correct", (task.input, messages[-1].content)
        assert messages[-1].content.startswith("Answer: ")
        results = [m for m in messages if isinstance(m, ToolMessage)]
        assert results and all(m.status == "success" for m in results)
        assert sorted({m.name for m in results}) == task.metadata["tools"]


@pytest.mark.parametrize("builder", ["react", "stategraph"])
def test_scripted_teacher_solves_tasks_through_the_other_builders(builder):
    agent = build_agent(ScriptedCalculatorTeacher(), builder)
    for task in make_tasks(10, "train") + make_tasks(10, "ood"):
        answer = agent.invoke({"messages": [("user", task.input)]})["messages"][-1].content
        assert task.verdict(answer) == "correct", (builder, task.input, answer)


def test_scripted_teacher_emits_calls_with_ids_and_arg_dicts_and_reads_tool_results():
    teacher = ScriptedCalculatorTeacher().bind_tools(TOOLS)
    question = HumanMessage("What is (4 plus 5) times (9 minus 2)?")
    first = teacher.invoke([question])
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [("add", {"a": 4, "b": 5}),
                                                                   ("subtract", {"a": 9, "b": 2})]
    assert len({c["id"] for c in first.tool_calls}) == 2 and first.usage_metadata["total_tokens"] > 0
    # The teacher uses the tool results it is given, right or wrong.
    results = [ToolMessage("10", tool_call_id=first.tool_calls[0]["id"]),
               ToolMessage("7", tool_call_id=first.tool_calls[1]["id"])]
    second = teacher.invoke([question, first, *results])
    assert [(c["name"], c["args"]) for c in second.tool_calls] == [("multiply", {"a": 10, "b": 7})]
    final = teacher.invoke([question, first, *results, second,
                            ToolMessage("70", tool_call_id=second.tool_calls[0]["id"])])
    assert final.content == "Answer: 70" and not final.tool_calls


def test_scripted_teacher_says_unknown_without_tools_when_it_cannot_solve():
    teacher = ScriptedCalculatorTeacher()
    answer = teacher.bind_tools(TOOLS).invoke([HumanMessage("Write me a poem about spring.")])
    assert answer.content.endswith("Answer: unknown") and not answer.tool_calls
    answer = teacher.invoke([HumanMessage("What is 2 plus 3?")])  # no tools bound
    assert answer.content.endswith("Answer: unknown") and not answer.tool_calls
    state = build_agent(teacher).invoke({"messages": [("user", "What is 5 divided by 0?")]})
    assert [m.status for m in state["messages"] if isinstance(m, ToolMessage)] == ["error"]
    assert state["messages"][-1].content.endswith("Answer: unknown")


def test_builders_use_the_system_prompt_and_reject_unknown_builders():
    seen = []

    class Spy(ScriptedCalculatorTeacher):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            seen.append(messages[0].content)
            return super()._generate(messages, stop, run_manager, **kwargs)

    for builder in ["create_agent", "react", "stategraph"]:
        build_agent(Spy(), builder).invoke({"messages": [("user", "What is 2 plus 3?")]})
    assert seen and set(seen) == {SYSTEM_PROMPT}
    with pytest.raises(ValueError, match="builder must be"):
        build_agent(ScriptedCalculatorTeacher(), "langgraph")
