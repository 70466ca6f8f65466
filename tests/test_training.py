"""Training: SFT on teacher traces and GRPO through the real LangGraph calculator agent, with a tiny random student.

The agent here is `create_agent` with two of the calculator's real tools (add, multiply) and single-step tasks, so
that prompts stay short enough for CPU training inside the test budget.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from langchain.agents import create_agent
from transformers import LogitsProcessor, LogitsProcessorList

from mentor_agents.demo.calculator import TOOLS, ScriptedCalculatorTeacher, make_tasks
from mentor_agents.integrations.langgraph.recording import record
from mentor_agents.integrations.langgraph.rollouts import graph_rollout_fn, run_rollouts
from mentor_agents.references import build_references
from mentor_agents.rollouts import InvalidToolCall, Rollout, ScoredRollout
from mentor_agents.from_scratch import make_tiny_student
from mentor_agents.student import load_student
from mentor_agents.traces import TraceStore
from mentor_agents.training.checkpoints import StageClock
from mentor_agents.training import (
    TrainConfig,
    evaluate,
    grpo,
    last_checkpoint,
    load_trained,
    merge,
    rollout_metrics,
    sft,
    sft_dataset,
    train,
)

torch.set_num_threads(1)

SYSTEM = "Use the tools."
TOOL_NAMES = ("add", "multiply")


def single_step_tasks(n: int, split: str, seed: int = 0):
    tasks = make_tasks(6 * n, split, seed=seed)
    return [t for t in tasks if t.metadata["tools"] in (["add"], ["multiply"]) and "(" not in t.input][:n]


def agent(model):
    return create_agent(model, [t for t in TOOLS if t.name in TOOL_NAMES], system_prompt=SYSTEM)


def tiny_student(path: Path, seed: int = 0) -> Path:
    """The tiny student with a wider embedding init: at the default 0.02 its tied output layer can hardly leave the
    uniform distribution, and LoRA cannot fix that."""
    make_tiny_student(path, seed=seed)
    model, tokenizer = load_student(path)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(5)
    model.save_pretrained(path)
    return path


def config(tmp: Path, **overrides) -> TrainConfig:
    base = dict(output_dir=str(tmp), max_new_tokens=40, max_turns=3, sft_lr=1e-2, sft_steps=96, lr=2e-3, beta=0.0)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def student_dir(workdir) -> Path:
    return tiny_student(workdir / "tiny")


@pytest.fixture(scope="module")
def traces(workdir):
    teacher = agent(ScriptedCalculatorTeacher())
    return record(teacher, single_step_tasks(64, "train"), TraceStore(workdir / "traces.jsonl"), progress=False)


@pytest.fixture(scope="module")
def held_out(workdir):
    teacher = agent(ScriptedCalculatorTeacher())
    traces = record(teacher, single_step_tasks(64, "test"), TraceStore(workdir / "held_out.jsonl"), progress=False)
    return build_references(traces)


@pytest.fixture(scope="module")
def rollout_fn():
    return graph_rollout_fn(agent(ScriptedCalculatorTeacher()))


@pytest.fixture(scope="module")
def sft_result(student_dir, traces, workdir):
    return sft(student_dir, None, traces, config(workdir / "sft-run"))


def test_sft_dataset_masks_exactly_the_assistant_turns(student_dir, traces):
    _, tokenizer = load_student(student_dir)
    row = sft_dataset(traces[:1], tokenizer)[0]
    trained = tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m])
    call = traces[0].tool_calls[0]
    assert f'"name": "{call.name}"' in trained and traces[0].final_answer in trained
    assert SYSTEM not in trained and traces[0].task_input not in trained and "<tool_response>" not in trained
    assert trained.count("<|im_end|>") == 2  # both assistant turns learn to stop


def test_sft_dataset_leaves_out_failed_and_incorrect_runs(student_dir, traces):
    _, tokenizer = load_student(student_dir)
    wrong = traces[1].model_copy(update={"verdict": "incorrect"})
    failed = traces[2].model_copy(update={"error": "TimeoutError: no result within 300 s"})
    assert len(sft_dataset([traces[0], wrong, failed, traces[3]], tokenizer)) == 2
    with pytest.raises(ValueError, match="incorrect verdict"):
        sft_dataset([wrong, failed], tokenizer)


def test_sft_raises_valid_tool_calls_in_the_graph(student_dir, sft_result, held_out, rollout_fn, workdir):
    cfg = config(workdir / "eval")
    model, tokenizer = load_student(student_dir)
    before = evaluate(model, tokenizer, held_out, rollout_fn, cfg)
    after = evaluate(sft_result.model, sft_result.tokenizer, held_out, rollout_fn, cfg)
    # The untrained student never writes a parseable call; after SFT most of its rollouts write the call markup and a
    # part of them a valid call (right tool name, JSON arguments). The 32 rollouts are sampled at temperature 1, so
    # the markup share moves with the installed libraries' numerics (25 of 32 with transformers 5.24, peft 0.21.2,
    # trl 1.16, where CI had passed 0.8 before): the bound leaves room for that.
    assert before["rollout/tool_call_rate"] == 0.0
    assert after["rollout/tool_call_rate"] > 0.0
    assert after["rollout/tool_call_rate"] + after["rollout/with_invalid_call"] > 0.6
    assert (sft_result.adapter_dir / "adapter_config.json").is_file()
    assert [json.loads(line)["step"] for line in (sft_result.output_dir / "metrics.jsonl").read_text().splitlines()
             ][-2:] == [96, 96]


@pytest.mark.slow
def test_mentor_grpo_after_sft_raises_the_mean_reward(sft_result, traces, rollout_fn, workdir):
    base = merge(sft_result, workdir / "sft-merged")
    cfg = config(workdir / "mentor", steps=40)
    result = grpo(base, None, build_references(traces), rollout_fn, cfg)
    steps = [h for h in result.metrics if "reward" in h]
    assert len(steps) == 40
    rewards = [h["reward"] for h in steps]
    # From this warm start the student rarely gets an answer right within the CPU budget, and how it raises the
    # reward depends on the sampling: it learns valid calls of the teacher's tool (0.16 for a wrong answer, the
    # MENTOR tool term), or it stops writing broken calls (0.1). Over seeds 0-3, with and without micro-batches in the
    # loss, the mean reward rose by 0.011-0.025 in all 8 runs, and the tool-call rate in 3 of them.
    first, last = statistics.fmean(rewards[:10]), statistics.fmean(rewards[-10:])
    assert last - first > 0.005, f"mean reward {first:.3f} -> {last:.3f}: {[round(r, 3) for r in rewards]}"
    logged = result.metrics[0]
    for key in ("reward_std", "reward/correct", "reward/tool_match", "rollout/tool_call_rate",
                "rollout/with_invalid_call", "rollout/turns", "frac_reward_zero_std"):
        assert key in logged, key
    lines = (result.output_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines][:40] == list(range(1, 41))


class ForceText(LogitsProcessor):
    """Makes every turn the same fixed token sequence (here: a tool call with broken JSON), then the end token."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        for row, seq in enumerate(input_ids.tolist()):
            done = next(k for k in range(len(self.ids), -1, -1) if k == 0 or seq[-k:] == self.ids[:k])
            forced[row, self.ids[min(done, len(self.ids) - 1)]] = 0.0
        return forced


def test_broken_json_gives_invalid_calls_and_low_rewards_not_errors(student_dir, traces, workdir):
    _, tokenizer = load_student(student_dir)
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": }\n</tool_call><|im_end|>'
    broken = LogitsProcessorList([ForceText(tokenizer(text)["input_ids"])])
    fn = graph_rollout_fn(agent(ScriptedCalculatorTeacher()), logits_processor=broken)
    cfg = config(workdir / "broken", steps=2, prompts_per_step=2, num_generations=2)
    result = grpo(student_dir, None, build_references(traces), fn, cfg)
    logged = [h for h in result.metrics if "reward" in h]
    assert len(logged) == 2
    assert all(h["rollout/with_invalid_call"] == 1.0 and h["rollout/tool_calls"] == 0 for h in logged)
    assert all(h["reward"] <= 0.1 + 1e-6 for h in logged)  # the "no answer" gate at most
    log = [ScoredRollout.model_validate_json(line)
           for line in (result.output_dir / "rollouts.jsonl").read_text().splitlines()]
    assert [r.step for r in log] == [1, 1, 1, 1, 2, 2, 2, 2]
    references = {ref.task_id for ref in build_references(traces)}
    assert all(r.task_id in references and r.tool_calls == [] and r.reward <= 0.1 + 1e-6 for r in log)
    assert all(r.invalid_calls and {c.kind for c in r.invalid_calls} == {"malformed"} for r in log)
    assert all(r.reason in ("no final answer", "cut off by turn limit") for r in log), [r.reason for r in log]
    # per step: the count of malformed calls in its 4 rollouts, as the log has them
    for h in logged:
        assert h["rollout/invalid_calls/<malformed>"] == sum(len(r.invalid_calls) for r in log if r.step == h["step"])


def test_turn_limit_cuts_rollouts_and_they_score_zero(student_dir, traces, workdir):
    _, tokenizer = load_student(student_dir)
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>'
    looping = LogitsProcessorList([ForceText(tokenizer(text)["input_ids"])])
    references = build_references(traces)[:2]
    model, tokenizer = load_student(student_dir)
    cfg = config(workdir / "loop", max_turns=2)
    rollouts = run_rollouts(agent(ScriptedCalculatorTeacher()), references, model, tokenizer, cfg.rollout,
                            logits_processor=looping)
    assert [r.finished for r in rollouts] == [False, False]
    assert [r.cut_by for r in rollouts] == ["turn_limit", "turn_limit"]
    assert {cfg.reward_fn(r, ref).reason for r, ref in zip(rollouts, references)} == {"cut off by turn limit"}
    assert all(r.turns == 2 and len(r.tool_calls) == 2 for r in rollouts)
    assert all(cfg.reward_fn(r, ref).value == 0.0 for r, ref in zip(rollouts, references))
    mask = rollouts[0].completion_mask
    assert 0 in mask and mask[0] == 1 and mask[-1] == 1  # tool results in the middle are masked


RESUMABLE = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    from transformers import TrainerCallback
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    import test_training as t
    from mentor_agents.references import build_references
    from mentor_agents.traces import TraceStore
    from mentor_agents.training import grpo

    class WaitAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            Path({marker!r}).write_text(str(state.global_step))
            time.sleep(120)  # the test kills us here, right after a checkpoint is complete

    refs = build_references(TraceStore({traces!r}).read())
    cfg = t.config(Path({out!r}), steps=6, save_steps=2, prompts_per_step=2, num_generations=2, max_new_tokens=8,
                   resume=bool(int(sys.argv[1])))
    result = grpo({student!r}, None, refs, t.graph_rollout_fn(t.agent(t.ScriptedCalculatorTeacher())), cfg,
                  output_dir={out!r}, callbacks=[] if int(sys.argv[1]) else [WaitAfterSave()])
    print(result.resumed_cpu_s)
""")


def child_cpu_s() -> float:
    """Process CPU seconds of this process's children that ended and were waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_sigkill_after_a_checkpoint_then_resume_continues(student_dir, traces, workdir):
    """Killed right after its step-2 checkpoint, a GRPO stage resumes from it, logs each step once, and adds the
    killed attempt's CPU up to that checkpoint (stored in it) to its own."""
    out, marker = workdir / "resume", workdir / "saved.marker"
    script = workdir / "resumable.py"
    script.write_text(RESUMABLE.format(tests=str(Path(__file__).parent), marker=str(marker),
                                       traces=str(workdir / "traces.jsonl"), out=str(out), student=str(student_dir)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cpu = child_cpu_s()
    proc = subprocess.Popen([sys.executable, str(script), "0"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_cpu, cpu = child_cpu_s() - cpu, child_cpu_s()
    assert marker.read_text() == "2"
    assert last_checkpoint(out).name == "checkpoint-2"
    stored = StageClock.stored(out / "checkpoint-2")
    assert 0 < stored < killed_cpu  # its CPU from the stage's start to the checkpoint; imports and loading came first
    # A save killed half-way leaves a checkpoint directory without its trainer state: it must be ignored.
    partial = out / "checkpoint-4"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"partial")
    assert last_checkpoint(out).name == "checkpoint-2"

    done = subprocess.run([sys.executable, str(script), "1"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert float(done.stdout.split()[-1]) == stored  # TrainResult.resumed_cpu_s
    # The final checkpoint holds both attempts' CPU: the killed one's up to checkpoint 2, and the resumed one's.
    assert 0 < StageClock.stored(out / "checkpoint-6") - stored < child_cpu_s() - cpu
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[:6] == [1, 2, 3, 4, 5, 6]  # steps 1-2 from the killed run, 3-6 after resuming, none twice
    logged = [json.loads(line)["step"] for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert logged == [step for step in range(1, 7) for _ in range(4)]
    model, _ = load_trained(out / "adapter", base_model=str(student_dir))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


def test_rollout_metrics_count_invalid_calls_by_name():
    unknown = InvalidToolCall(name="python", error="unknown tool 'python'", kind="unknown_tool")
    malformed = InvalidToolCall(error="Expecting value", kind="malformed")
    metrics = rollout_metrics([Rollout(invalid_calls=[unknown, unknown, malformed]), Rollout(invalid_calls=[unknown])])
    assert metrics["rollout/invalid_calls/python"] == 3 and metrics["rollout/invalid_calls/<malformed>"] == 1
    assert metrics["rollout/with_invalid_call"] == 1.0 and metrics["rollout/rerendered_rollouts"] == 0
    assert rollout_metrics([Rollout(rerendered_turns=2), Rollout(), Rollout(rerendered_turns=1)])[
        "rollout/rerendered_rollouts"] == 2
    assert not any(key.startswith("rollout/invalid_calls/") for key in rollout_metrics([Rollout()]))


def test_config_rejects_unknown_method_and_reward():
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="rl")
    with pytest.raises(ValueError, match="reward"):
        TrainConfig(reward="dense")


def test_sft_sparse_runs_sparse_grpo_from_the_merged_sft_model_and_ablations_follow_sft(sft_result, traces,
                                                                                         rollout_fn, workdir):
    assert TrainConfig(method="sft+sparse", reward="mentor").reward_fn.name == "sparse"
    assert TrainConfig(method="sft+mentor", reward="no_match").reward_fn.name == "no_match"
    out = workdir / "sft-sparse"
    cfg = config(out, method="sft+sparse", steps=1, prompts_per_step=1, num_generations=2)
    result = train(cfg, sft_result.base_model, traces=traces, rollout_fn=rollout_fn, sft_result=sft_result)
    assert result.output_dir == out / "sparse" and result.base_model == str(out / "sft" / "merged")
    rows = [json.loads(line) for line in (out / "sparse" / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and not any("tool_match" in row["breakdown"] for row in rows), rows
    assert "rewards/sparse/mean" in result.metrics[0], result.metrics[0]
    info = json.loads((out / "sparse" / "train_config.json").read_text())  # beside the adapter, for the model card
    assert info["method"] == "sft+sparse" and info["stage"] == "sparse" and "name='sparse'" in info["reward"]
    assert info["train_config"]["num_generations"] == 2 and info["tools"] and info["teacher"], info


def test_the_rollout_contract_and_recording_import_no_training_stack():
    """`RolloutSettings` and `RolloutFn` import no torch; recording a teacher through the LangGraph adapter imports
    no torch, transformers, TRL or peft, nor the training package."""
    code = textwrap.dedent("""
        import sys
        from mentor_agents.rollouts import RolloutFn, RolloutSettings
        assert not {"torch", "transformers", "trl", "peft"} & set(sys.modules), sys.modules.keys()
        import mentor_agents.integrations.langgraph.adapter, mentor_agents.integrations.langgraph.recording
        from mentor_agents.integrations.langgraph import record, swap_model
        assert not {"torch", "transformers", "trl", "peft", "mentor_agents.training"} & set(sys.modules), \
            sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "trl", "peft"))[:5]
        print(RolloutSettings(max_turns=3))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert out.returncode == 0 and "max_turns=3" in out.stdout, out.stderr


def test_lora_layers_adapt_only_those_layers_and_train(student_dir, traces, workdir):
    linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    result = sft(student_dir, None, traces[:8], config(workdir / "top-layer", sft_steps=2, sft_batch_size=4,
                                                       lora_layers=[1], lora_target_modules=linear))
    adapted = {name.split(".layers.")[1].split(".")[0] for name, p in result.model.named_parameters()
               if "lora_" in name}
    assert adapted == {"1"}
    moved = [p for name, p in result.model.named_parameters() if "lora_B" in name]
    assert moved and all(p.abs().sum() > 0 for p in moved)  # lora_B starts at zero: the adapter trained
