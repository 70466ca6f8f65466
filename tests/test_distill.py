"""`distill` end to end: tiny student, the scripted teacher served over HTTP, every stage, resume, swap_into;
and the one-line call with no tasks, where the teacher writes them."""

import copy
import gc
import json
from dataclasses import replace

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent, make_tasks
from mentor_agents.distill import DistillConfig, Run, adapter_for, distill
from mentor_agents.errors import InvalidInputError
from mentor_agents.integrations.openai.server import create_app, running_server
from mentor_agents.integrations.openai.teacher import OpenAITeacher
from mentor_agents.references import load_references
from mentor_agents.traces import TraceStore
from mentor_agents.training import TrainConfig

torch.set_num_threads(1)

TINY = DistillConfig(
    train=TrainConfig(sft_steps=4, steps=2, prompts_per_step=2, num_generations=2, max_new_tokens=24,
                      max_turns=2, save_steps=1),
    baselines=("sft",), concurrency=2, timeout_s=120,
)


@pytest.fixture(scope="module")
def teacher_url():
    with running_server(create_app(ScriptedCalculatorTeacher(), "scripted-teacher")) as url:
        yield url


def test_distill_every_stage_resume_and_swap(tmp_path, teacher_url):
    agent = build_agent(ScriptedCalculatorTeacher())
    teacher = OpenAITeacher(base_url=teacher_url, model="scripted-teacher", api_key="test-key")
    run_dir = tmp_path / "run"
    kwargs = dict(student="fitted", teacher=teacher, method="mentor", eval_tasks=make_tasks(3, "test"),
                  ood_tasks=make_tasks(2, "ood"), config=TINY, run_dir=run_dir)
    student = distill(agent, make_tasks(8, "train"), **kwargs)

    for name in ("tasks.json", "traces.jsonl", "references.jsonl", "metrics.json", "report.md", "success.png",
                 "reward_curve.png", "run.json", "state.json"):
        assert (run_dir / name).exists(), name
    traces = TraceStore(run_dir / "traces.jsonl").read()
    assert len(traces) == 8 and all(t.verdict == "correct" for t in traces)
    assert all(t.teacher_endpoint == teacher_url for t in traces)
    assert "test-key" not in (run_dir / "traces.jsonl").read_text()
    tasks = json.loads((run_dir / "tasks.json").read_text())
    assert [len(tasks["train"]), len(tasks["test"]), len(tasks["ood"])] == [8, 3, 2]
    assert not {t["id"] for t in tasks["train"]} & {t["id"] for t in tasks["test"]}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"teacher|test", "untrained student|test", "sft|test", "mentor|ood"} <= set(metrics["evaluation"])
    assert metrics["evaluation"]["teacher|test"]["success"] == 1.0
    assert len(metrics["training"]["mentor"]) >= 2
    assert "| teacher | test | 3 | 100%" in student.report
    rollout_log = run_dir / "train" / "mentor" / "mentor" / "rollouts.jsonl"
    assert len(rollout_log.read_text().splitlines()) == 2 * 2 * 2  # steps x prompts x generations
    assert "| most frequent invalid tool calls in training | " in student.report
    done = json.loads((run_dir / "state.json").read_text())["done"]
    assert {"tasks", "traces", "train:sft", "train:mentor"} <= set(done)

    # a second call resumes: no stage is redone, nothing is recorded twice
    adapter_file = next((run_dir / "train").rglob("adapter_model.safetensors"))
    stamp = adapter_file.stat().st_mtime_ns
    again = distill(agent, make_tasks(8, "train"), **kwargs)
    assert adapter_file.stat().st_mtime_ns == stamp
    assert len(TraceStore(run_dir / "traces.jsonl").read()) == 8
    assert len(TraceStore(run_dir / "eval" / "sft-test.jsonl").read()) == 3
    assert again.report == student.report

    # the student in the same graph, with the same tools; the teacher graph is unchanged
    swapped = student.swap_into()
    out = swapped.invoke({"messages": [("user", make_tasks(1, "test")[0].input)]})
    assert out["messages"][-1].type == "ai"
    teacher_out = agent.invoke({"messages": [("user", "What is 2 plus 3?")]})
    assert teacher_out["messages"][-1].content.endswith("Answer: 5")


def test_distill_with_no_tasks_synthesizes_them(tmp_path):
    agent = build_agent(ScriptedCalculatorTeacher())
    config = replace(TINY, synthetic_tasks=10, consistency_samples=2, baselines=())
    distill(agent, student="fitted", method="sft", config=config, run_dir=tmp_path / "run")
    tasks = json.loads((tmp_path / "run" / "tasks.json").read_text())
    assert len(tasks["train"]) + len(tasks["test"]) == 10 and len(tasks["test"]) == 2
    assert all(t["metadata"]["synthesized"] and t["verifier"] is None for t in tasks["train"])
    traces = TraceStore(tmp_path / "run" / "traces.jsonl").read()
    assert len(traces) == 2 * len(tasks["train"])  # two teacher samples per task
    assert all(t.verdict == "unknown" for t in traces)  # the store keeps what the teacher did, unjudged
    references = load_references(tmp_path / "run" / "references.jsonl")
    # the two samples of every task agreed, so every task is verified by self-consistency
    assert len(references) == len(tasks["train"]) and all(r.verdict == "correct" for r in references)


def test_evaluation_uses_a_merged_copy_in_the_eval_dtype_and_bad_names_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="eval_dtype must be one of float32, bfloat16, float16"):
        DistillConfig(eval_dtype="bf16")
    agent = build_agent(ScriptedCalculatorTeacher())
    run = Run(tmp_path, adapter_for(agent), "tiny", DistillConfig(eval_dtype="float16", eval_batch_size=2))
    base, tokenizer = run.base()
    trained = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj"]))
    torch.nn.init.normal_(trained.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight)
    chat = run.student_model(trained, tokenizer)
    evaluated = chat.model.model  # the batcher's model
    assert isinstance(trained, PeftModel) and trained.dtype == torch.float32  # the trained student is left as it was
    assert not isinstance(evaluated, PeftModel) and evaluated.dtype == torch.float16
    ids = tokenizer("What is 2 plus 3?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(evaluated(ids).logits.float(), trained(ids).logits, atol=0.05, rtol=0.05)
        assert not torch.allclose(base(ids).logits, trained(ids).logits, atol=0.05, rtol=0.05)
    out = run.adapter.swap(chat).invoke({"messages": [("user", "What is 2 plus 3?")]})
    assert out["messages"][-1].type == "ai"


def test_an_evaluation_frees_its_runs_cached_turns_once_they_have_ended(tmp_path):
    agent = build_agent(ScriptedCalculatorTeacher())
    config = DistillConfig(eval_batch_size=3, train=TrainConfig(max_new_tokens=8, max_turns=2))
    run = Run(tmp_path, adapter_for(agent), "tiny", config)
    run.splits = {"test": make_tasks(3, "test")}
    chat = run.student_model(*run.base())
    run.evaluate_split("student", chat, "test")
    batcher = chat.model
    assert sum(batcher.batch_sizes.values()) >= 1 and batcher.kv.rows == {}
    del chat, batcher  # the run does not keep a chat model's batcher, nor its model copy, alive
    gc.collect()
    assert len(run._batchers) == 0


def test_given_traces_train_on_the_train_split_in_task_order_whatever_their_file_order(tmp_path):
    from mentor_agents.distill import prepare_tasks
    from mentor_agents.integrations.langgraph import record

    agent, tasks = build_agent(ScriptedCalculatorTeacher()), make_tasks(10)
    given = tmp_path / "given.jsonl"
    record(agent, tasks, given, progress=False)
    failed = TraceStore(given).read()[3].model_copy(update={"error": "timeout", "verdict": "wrong"})
    lines = given.read_text().splitlines()
    given.write_text("\n".join([failed.model_dump_json(), *reversed(lines)]) + "\n")

    run = Run(tmp_path / "run", adapter_for(agent), "tiny", TINY)
    splits = prepare_tasks(run.state, run.adapter, None, given, None, None, None, TINY)
    traces, references = run.record(None, splits, given)
    train = [task.id for task in splits["train"]]
    assert splits["test"] and not {t.id for t in splits["test"]} & set(train)
    assert [t.task_id for t in traces] == train and all(t.error is None for t in traces)
    assert [r.task_id for r in references] == train
    assert sorted(t.task_id for t in TraceStore(run.dir / "traces.jsonl").read()) == sorted(train)
    run.load_recorded()
    assert [t.task_id for t in run.traces] == train and [r.task_id for r in run.references] == train
