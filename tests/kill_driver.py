"""Runs `record`, `train` or `distill` in forked children, SIGKILLs each child at a seeded point, then resumes to
completion; used by test_kills.py.

    python kill_driver.py {record|train|distill} WORKDIR SEED KILLS

The driver imports everything once and forks a child per attempt, so that ten kills cost ten forks, not ten
interpreter starts. Each attempt's trigger and outcome go to WORKDIR/attempts.jsonl; the last attempt runs
unkilled and must exit 0.
"""

from __future__ import annotations

import faulthandler
import glob
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

torch.set_num_threads(1)
# Forking copies locks held by other threads; tqdm's monitor thread would leave tqdm's lock held in the children.
tqdm.monitor_interval = 0
sys.path.insert(0, str(Path(__file__).parent))

from langchain.agents import create_agent  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from mentor_agents import training  # noqa: E402
from mentor_agents.app import cli  # noqa: E402
from mentor_agents.demo.calculator import (  # noqa: E402
    TOOLS,
    ScriptedCalculatorTeacher,
    build_agent,
    make_tasks,
)
from mentor_agents.distill import DistillConfig, distill  # noqa: E402
from mentor_agents.integrations.langgraph import record  # noqa: E402
from mentor_agents.integrations.langgraph.rollouts import graph_rollout_fn  # noqa: E402
from mentor_agents.from_scratch import make_tiny_student  # noqa: E402
from mentor_agents.student import load_student  # noqa: E402
from mentor_agents.traces import TraceStore  # noqa: E402


class SlowTeacher(ScriptedCalculatorTeacher):
    """The scripted teacher, slowed down so that a run spans many kill points."""

    def _generate(self, *args, **kwargs):
        time.sleep(0.02)
        return super()._generate(*args, **kwargs)


def small_agent(model):
    return create_agent(model, [t for t in TOOLS if t.name in ("add", "multiply")], system_prompt="Use the tools.")


def single_step_tasks(n: int, split: str):
    tasks = make_tasks(6 * n, split, seed=0)
    return [t for t in tasks if t.metadata["tools"] in (["add"], ["multiply"]) and "(" not in t.input][:n]


RECORD_TASKS = 40
TEST_TASKS = single_step_tasks(6, "test")
TRAIN = dict(sft_steps=24, steps=12, save_steps=1, save_total_limit=2, prompts_per_step=2, num_generations=2,
             max_new_tokens=8, max_turns=2, sft_lr=1e-2, lr=2e-3, beta=0.0, sft_batch_size=4)
CLI_TRAIN = ["--steps", "10", "--num-generations", "2", "--prompts-per-step", "2"]
DISTILL = DistillConfig(train=training.TrainConfig(**{**TRAIN, "steps": 8}), concurrency=2, timeout_s=60)


class FirstStep(TrainerCallback):
    """Logs the first optimizer step a (possibly resumed) training attempt runs."""

    def __init__(self, log: Path, stage: str, checkpoint: Path | None):
        self.log, self.stage, self.checkpoint, self.done = log, stage, checkpoint, False

    def on_step_end(self, args, state, control, **kwargs):
        if not self.done:
            self.done = True
            with open(self.log, "a") as f:
                f.write(json.dumps({"stage": self.stage, "resumed_from": self.checkpoint and self.checkpoint.name,
                                    "first_step": state.global_step}) + "\n")
                f.flush()
                os.fsync(f.fileno())


def instrument_training(log: Path) -> None:
    from mentor_agents.training import grpo_trainer, sft_trainer

    original = sft_trainer.fit

    def fit(trainer, out, resume):
        trainer.add_callback(FirstStep(log, out.name, training.last_checkpoint(out) if resume else None))
        return original(trainer, out, resume)

    sft_trainer.fit = grpo_trainer.fit = fit


def setup(kind: str, work: Path) -> None:
    if kind in ("train", "distill"):
        make_tiny_student(work / "tiny", seed=0)
        model, _ = load_student(work / "tiny")
        with torch.no_grad():  # as in test_training: a wider init lets LoRA move the tiny model's outputs
            model.get_input_embeddings().weight.mul_(5)
        model.save_pretrained(work / "tiny")
    if kind == "cli-train":
        assert cli.main(["record", "calculator", "--run-dir", str(work / "run"), "--num-tasks", "8", "--num-eval",
                         "2", "--num-ood", "0"]) == 0
    if kind == "train":
        record(small_agent(ScriptedCalculatorTeacher()), single_step_tasks(16, "train"), work / "teacher.jsonl",
               progress=False)


def job(kind: str, work: Path) -> None:
    if kind == "record":
        record(build_agent(SlowTeacher()), make_tasks(RECORD_TASKS, "train"), TraceStore(work / "traces.jsonl"),
               concurrency=2, progress=False)
    elif kind == "train":
        instrument_training(work / "steps.jsonl")
        config = training.TrainConfig(method="sft+mentor", output_dir=str(work / "run"), resume=True, **TRAIN)
        traces = TraceStore(work / "teacher.jsonl").read()
        training.train(config, str(work / "tiny"), traces=traces,
                       rollout_fn=graph_rollout_fn(small_agent(ScriptedCalculatorTeacher())))
    elif kind == "cli-train":
        # `mentor train` with its default flags (no --save-steps), only smaller, so that ten kills stay cheap.
        instrument_training(work / "steps.jsonl")
        assert cli.main(["train", "calculator", "--run-dir", str(work / "run"), *CLI_TRAIN]) == 0
    else:
        instrument_training(work / "steps.jsonl")
        student = distill(small_agent(SlowTeacher()), single_step_tasks(16, "train"), student=str(work / "tiny"),
                          method="mentor", eval_tasks=TEST_TASKS, config=DISTILL,
                          run_dir=work / "run")
        (work / "done.json").write_text(json.dumps({"report": bool(student.report)}))


PROGRESS = {
    # Lines of trace, eval and metrics files, newest checkpoint steps, and files that mark a finished stage: one
    # unit of progress is one trace, one logged step, one checkpoint or one stage, whichever stage is running.
    "record": [("lines", "traces.jsonl")],
    "train": [("lines", "run/*/metrics.jsonl"), ("checkpoint", "run/*"), ("files", "run/*/adapter run/*/merged")],
    "cli-train": [("lines", "run/train/*/*/metrics.jsonl"), ("files", "run/train/*/*/adapter run/students/*")],
    "distill": [("lines", "run/traces.jsonl run/eval/*.jsonl run/train/*/*/metrics.jsonl"),
                ("checkpoint", "run/train/*/*"), ("files", "run/*.json run/*.md run/student run/train/*/*/adapter")],
}


def triggers(kind: str, rng: random.Random) -> tuple:
    """When to kill the next child: after a seeded delay, or after 1-3 new units of progress."""
    max_delay = {"record": 0.6, "train": 1.2, "distill": 1.5, "cli-train": 1.5}[kind]
    if rng.random() < 0.4:
        return ("delay", round(rng.uniform(0.0, max_delay), 3))
    # The CLI checkpoints every 5 steps by default: let most of its attempts get past one.
    return ("progress", rng.randint(3, 7) if kind == "cli-train" else rng.randint(1, 3))


def progress(work: Path, kind: str) -> int:
    return sum(count(work, what, patterns) for what, patterns in PROGRESS[kind])


def count(work: Path, what: str, patterns: str) -> int:
    paths = [Path(p) for pattern in patterns.split() for p in glob.glob(str(work / pattern))]
    if what == "checkpoint":  # the newest step saved per stage: old checkpoints are rotated away
        return sum(max((int(c.name.rsplit("-", 1)[1]) for c in d.glob("checkpoint-*")
                        if c.name.rsplit("-", 1)[1].isdigit()), default=0) for d in paths if d.is_dir())
    if what == "files":
        return len(paths)
    return sum(p.read_bytes().count(b"\n") for p in paths if p.is_file())


def fresh_tqdm_locks() -> None:
    """tqdm's locks hold a multiprocessing semaphore that forked children share: a child killed while holding one
    would block every later child. Each child gets its own (tqdm and its subclasses keep one each)."""
    classes = [tqdm]
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        if cls is tqdm or "_lock" in vars(cls):
            cls._lock = threading.RLock()


def main() -> None:
    kind, work, seed, kills = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    work.mkdir(parents=True, exist_ok=True)
    # Setup in a child of its own: the driver must stay single-threaded for its forks (saving a model starts pools).
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            setup(kind, work)
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0, "setup failed"
    assert threading.active_count() == 1, f"fork needs a single-threaded driver: {threading.enumerate()}"
    rng = random.Random(seed)
    log = work / "attempts.jsonl"
    killed_so_far, attempt = 0, 0
    while True:
        last = killed_so_far == kills or attempt == 3 * kills  # a run that keeps finishing early ends the kills
        trigger = ("none",) if last else triggers(kind, rng)
        baseline = progress(work, kind)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            # A hung child prints where it hangs (a test failure then names the place) instead of waiting silently.
            faulthandler.dump_traceback_later(120, exit=True)
            fresh_tqdm_locks()
            code = 0
            try:
                job(kind, work)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        killed = False
        while True:
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                break
            elapsed = time.monotonic() - start
            if trigger[0] == "delay":
                fire = elapsed >= trigger[1]
            elif trigger[0] == "progress":
                fire = progress(work, kind) >= baseline + trigger[1]
            else:
                fire = False
            if fire or elapsed > 180:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                killed = os.WIFSIGNALED(status)  # False when the child had just finished on its own
                break
            time.sleep(0.005)
        with open(log, "a") as f:
            f.write(json.dumps({
                "attempt": attempt, "trigger": list(trigger), "killed": killed,
                "progress": [baseline, progress(work, kind)],
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "seconds": round(time.monotonic() - start, 3),
            }) + "\n")
        killed_so_far += killed
        attempt += 1
        if last:
            break
    last = json.loads(log.read_text().splitlines()[-1])
    sys.exit(0 if last["exit"] == 0 else 1)


if __name__ == "__main__":
    main()
