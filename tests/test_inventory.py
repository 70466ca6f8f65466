"""The inventory domain: a seeded SQLite database, tools that run real SQL, seeded tasks with ground truth from the
database, and the scripted teacher solving them through the real create_agent graph, one database copy per run."""

import json
import sqlite3
from contextlib import closing
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

from mentor_agents.integrations.langgraph import record
from mentor_agents.demo.inventory import (
    SYSTEM_PROMPT, TOOLS, ScriptedInventoryTeacher, build_agent, create_db, make_tasks,
)
from mentor_agents.tasks import NumericMatch
from mentor_agents.traces import TraceStore


@pytest.fixture
def db(tmp_path):
    return create_db(tmp_path / "inventory.sqlite", seed=0)


def rows(path, sql):
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def call(tool_name, db_path, **args):
    tool = next(t for t in TOOLS if t.name == tool_name)
    return tool.invoke({"name": tool_name, "args": {**args, "state": {"db_path": str(db_path)}}, "id": "call_1",
                        "type": "tool_call"})


def ask(agent, question):
    return agent.invoke({"messages": [{"role": "user", "content": question}]})["messages"]


def test_database_is_seeded_and_real(tmp_path):
    a, b = create_db(tmp_path / "a.sqlite", seed=0), create_db(tmp_path / "b.sqlite", seed=0)
    c = create_db(tmp_path / "c.sqlite", seed=1)
    dump = lambda p: rows(p, "SELECT * FROM products JOIN stock USING (sku) ORDER BY sku") + rows(p, "SELECT * FROM orders")
    assert dump(a) == dump(b) != dump(c)
    assert rows(a, "SELECT COUNT(*), MIN(sku) FROM products") == [(30, 1001)]
    assert rows(a, "SELECT COUNT(*) FROM orders") == [(20,)]
    assert {r[0] for r in rows(a, "SELECT DISTINCT status FROM orders")} <= {"placed", "shipped", "cancelled"}


def test_tools_run_sql_and_write(db):
    sku, price, stock = rows(db, "SELECT sku, price, quantity FROM products JOIN stock USING (sku) "
                                 "WHERE quantity > 5 ORDER BY sku LIMIT 1")[0]
    assert f'"quantity": {stock}' in call("get_stock", db, sku=sku).content
    assert f'"price": {price}' in call("get_product", db, sku=sku).content
    placed = call("place_order", db, sku=sku, quantity=3, customer="Alice Chen")
    assert placed.status == "success" and f'"total": {round(3 * price, 2)}' in placed.content
    assert rows(db, f"SELECT quantity FROM stock WHERE sku = {sku}") == [(stock - 3,)]
    order_id = rows(db, "SELECT MAX(id) FROM orders")[0][0]
    assert '"status": "placed"' in call("get_order", db, order_id=order_id).content
    assert call("cancel_order", db, order_id=order_id).status == "success"
    assert rows(db, f"SELECT quantity FROM stock WHERE sku = {sku}") == [(stock,)]
    assert f'"quantity": {stock + 7}' in call("restock", db, sku=sku, quantity=7).content
    assert sku in [p["sku"] for p in json.loads(call("search_products", db, query="").content)]
    for t in TOOLS:
        schema = convert_to_openai_tool(t)["function"]
        assert t.description and "state" not in schema["parameters"]["properties"], t.name
        assert all(p.get("description") for p in schema["parameters"]["properties"].values()), t.name


@pytest.mark.parametrize("tool_name,args,expected", [
    ("get_stock", {"sku": 9999}, "no product with SKU 9999"),
    ("get_order", {"order_id": 999}, "no order with id 999"),
    ("list_products", {"category": "weapons"}, "unknown category 'weapons'"),
    ("place_order", {"sku": 1001, "quantity": 100000, "customer": "Alice Chen"}, "cannot order 100000"),
    ("restock", {"sku": 1001, "quantity": 0}, "quantity must be at least 1"),
])
def test_bad_requests_become_error_tool_messages(db, tool_name, args, expected):
    message = call(tool_name, db, **args)
    assert isinstance(message, ToolMessage) and message.status == "error" and expected in message.content


def test_a_shipped_order_cannot_be_cancelled(db):
    (order_id,) = rows(db, "SELECT id FROM orders WHERE status = 'shipped' LIMIT 1")[0]
    message = call("cancel_order", db, order_id=order_id)
    assert message.status == "error" and "is shipped and cannot be cancelled" in message.content


def test_make_tasks_is_seeded_with_single_and_multi_step_kinds():
    first, again = make_tasks(30, seed=3), make_tasks(30, seed=3)
    assert [t.model_dump() for t in first] == [t.model_dump() for t in again]
    assert [t.id for t in first] == [f"inventory-3-{i}" for i in range(30)]
    assert len({t.input for t in first}) == 30
    assert [t.input for t in make_tasks(30, seed=4)] != [t.input for t in first]
    assert all(isinstance(t.verifier, NumericMatch) and t.ground_truth is not None for t in first)
    steps = {len(t.metadata["tools"]) for t in first}
    assert steps == {1, 2}
    assert len({t.metadata["kind"] for t in first}) == 11
    assert len(make_tasks(300)) == 300
    with pytest.raises(ValueError, match="non-negative"):
        make_tasks(-1)


def test_ground_truth_comes_from_the_database_of_the_same_seed(tmp_path):
    db = create_db(tmp_path / "inventory.sqlite", seed=5)
    for task in make_tasks(40, seed=0, db_seed=5):
        if task.metadata["kind"] == "stock":
            sku = int(task.input.split("SKU ")[1].split()[0])
            assert rows(db, f"SELECT quantity FROM stock WHERE sku = {sku}") == [(task.ground_truth,)]
        if task.metadata["kind"] == "category_count":
            category = task.input.split("the ")[1].split(" category")[0]
            assert rows(db, f"SELECT COUNT(*) FROM products WHERE category = '{category}'") == [(task.ground_truth,)]


def test_scripted_teacher_solves_the_tasks_through_the_real_graph(db):
    agent = build_agent(ScriptedInventoryTeacher(), db)
    tasks = make_tasks(30, seed=0)
    verdicts = [task.verdict(ask(agent, task.input)[-1].text) for task in tasks]
    assert verdicts.count("correct") >= 0.95 * len(tasks)
    multi = next(t for t in tasks if t.metadata["kind"] == "find_and_order")
    messages = ask(agent, multi.input)
    assert [m.tool_calls[0]["name"] for m in messages if isinstance(m, AIMessage) and m.tool_calls] == \
        ["search_products", "place_order"]


def test_every_run_writes_to_its_own_copy(db):
    before = db.read_bytes()
    agent = build_agent(ScriptedInventoryTeacher(), db)
    task = next(t for t in make_tasks(30, seed=0) if t.metadata["kind"] == "order_then_stock")
    answers = [ask(agent, task.input)[-1].text for _ in range(3)]
    # The order was written (the stock read after it is lower), but only in each run's copy: the same answer three
    # times, and the seeded file is untouched.
    assert all(task.verdict(a) == "correct" for a in answers)
    assert db.read_bytes() == before


def test_parallel_recorded_runs_stay_isolated(db, tmp_path):
    agent = build_agent(ScriptedInventoryTeacher(), db)
    tasks = [t for t in make_tasks(40, seed=2) if len(t.metadata["tools"]) == 2][:12]
    traces = record(agent, tasks, TraceStore(tmp_path / "traces.jsonl"), concurrency=4, progress=False)
    assert [t.verdict for t in traces] == ["correct"] * len(tasks)
    assert traces[0].system_prompt == SYSTEM_PROMPT
    assert {s["function"]["name"] for s in traces[0].tools} == {t.name for t in TOOLS}


def test_unknown_sku_is_an_error_message_not_a_crash(db):
    messages = ask(build_agent(ScriptedInventoryTeacher(), db), "How many units of SKU 9999 are in stock?")
    errors = [m for m in messages if isinstance(m, ToolMessage)]
    assert len(errors) == 1 and errors[0].status == "error" and "no product with SKU 9999" in errors[0].text
    assert messages[-1].text.endswith("Answer: unknown")


class Scripted(BaseChatModel):
    """Replays fixed replies, one per model call."""

    replies: list[AIMessage]

    @property
    def _llm_type(self) -> str:
        return "scripted-replies"

    def bind_tools(self, tools, **kwargs):
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        calls = sum(isinstance(m, AIMessage) for m in messages)
        return ChatResult(generations=[ChatGeneration(message=self.replies[calls])])


def test_invalid_arguments_come_back_as_tool_errors(db):
    model = Scripted(replies=[
        AIMessage(content="", tool_calls=[{"name": "get_stock", "args": {"sku": "lots"}, "id": "c1",
                                           "type": "tool_call"}]),
        AIMessage(content="Answer: unknown"),
    ])
    messages = ask(build_agent(model, db), "How many units of SKU 1001 are in stock?")
    (tool_message,) = [m for m in messages if isinstance(m, ToolMessage)]
    assert tool_message.status == "error" and "sku" in tool_message.text
    assert messages[-1].text == "Answer: unknown"


def test_build_agent_creates_a_missing_database(tmp_path):
    path = tmp_path / "sub" / "inventory.sqlite"
    agent = build_agent(ScriptedInventoryTeacher(), path, db_seed=2)
    task = make_tasks(1, seed=0, db_seed=2)[0]
    assert path.exists() and task.verdict(ask(agent, task.input)[-1].text) == "correct"
    default = build_agent(ScriptedInventoryTeacher())
    task = make_tasks(1, seed=0)[0]
    assert task.verdict(ask(default, task.input)[-1].text) == "correct"
