"""Run `mentor demo` (its `DEMO_CONFIG`) over seeds and thread counts, and measure how much its result and its cost move.

```bash
python examples/demo_stability.py                      # seeds 0 1 2 x threads 1 2, one run at a time
python examples/demo_stability.py --parallel 2         # two runs at once (each then has about one core)
```

A run whose ``DIR.json`` exists in the work directory is not run again (its result is read back), so the
sweep resumes and can be split over several invocations. Each run is the real command, `mentor demo --seed S --run-dir DIR`, with ``OMP_NUM_THREADS=T`` and
``MKL_NUM_THREADS=T``. Per run it keeps the wall time and the CPU time of the process (from `os.wait4`), the timing
line the demo prints, and the held-out success of every model from the run's ``metrics.json``. It writes
``examples/results/demo_stability.json`` and the table between the ``stability`` markers of
``examples/results/demo_run.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from mentor_agents.demo.run import reward_start_end

RESULTS = Path(__file__).parent / "results"
BEGIN, END = "<!-- stability:begin -->", "<!-- stability:end -->"
TIMING = re.compile(r"mentor demo took .*")


def run_one(seed: int, threads: int, run_dir: Path) -> dict:
    """One `mentor demo` run in a fresh ``run_dir``: its cost, its printed timing line and its success table."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}
    log = run_dir.with_suffix(".log")
    shutil.rmtree(run_dir, ignore_errors=True)  # a run stopped before its result was written starts over: one process
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(["mentor", "demo", "--seed", str(seed), "--run-dir", str(run_dir)], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"mentor demo --seed {seed} at {threads} threads failed; see {log}")
    printed = TIMING.findall(log.read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "seed": seed, "threads": threads, "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024), "printed": printed[-1] if printed else None,
        "success": {key: value["success"] for key, value in metrics["evaluation"].items()},
        "grpo_reward": [row["reward"] for row in metrics["training"].get("sft+mentor", []) if "reward" in row],
    }


def summary(runs: list[dict]) -> dict:
    """Range of held-out success per model, and the largest cost, over ``runs``."""
    out = {}
    for model in ("sft", "sft+mentor"):
        values = [r["success"][f"{model}|test"] for r in runs]
        out[model] = {"min": min(values), "max": max(values), "spread_points": round((max(values) - min(values)) * 100)}
    out["max_wall_s"] = max(r["wall_s"] for r in runs)
    out["max_cpu_s"] = max(r["cpu_s"] for r in runs)
    return out


def table(runs: list[dict]) -> str:
    lines = ["| seed | threads | wall | CPU s | sft test | sft+mentor test | sft+mentor ood | GRPO reward first -> last steps |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["seed"], r["threads"])):
        reward = reward_start_end([{"reward": value} for value in r["grpo_reward"]])
        curve = "–" if reward is None else f"{reward[0]:.2f} -> {reward[1]:.2f}"
        minutes, seconds = divmod(round(r["wall_s"]), 60)
        lines.append(f"| {r['seed']} | {r['threads']} | {minutes} min {seconds:02d} s | {r['cpu_s']:.0f} | "
                     f"{r['success']['sft|test']:.0%} | {r['success']['sft+mentor|test']:.0%} | "
                     f"{r['success'].get('sft+mentor|ood', 0):.0%} | {curve} |")
    return "\n".join(lines)


def write_markdown(path: Path, runs: list[dict], stats: dict, conditions: str) -> None:
    """Put the table between the stability markers of ``path`` (at the top when it has none)."""
    block = (f"{BEGIN}\n## Stability: `mentor demo` over seeds and thread counts (examples/demo_stability.py)\n\n"
             f"{conditions}\n\n{table(runs)}\n\n"
             f"Held-out (test) success spread: SFT {stats['sft']['spread_points']} points "
             f"({stats['sft']['min']:.0%}–{stats['sft']['max']:.0%}), SFT+MENTOR "
             f"{stats['sft+mentor']['spread_points']} points ({stats['sft+mentor']['min']:.0%}–"
             f"{stats['sft+mentor']['max']:.0%}). Largest run: {stats['max_wall_s'] / 60:.1f} min wall, "
             f"{stats['max_cpu_s']:.0f} CPU-seconds.\n{END}\n")
    text = path.read_text() if path.exists() else ""
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END) + 1:]
    else:
        text = block + "\n" + text
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/demo_stability"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    jobs = [(seed, threads, args.work_dir / f"seed{seed}-threads{threads}")
            for seed in args.seeds for threads in args.threads]
    runs: list[dict] = []
    lock = threading.Lock()

    def finish(job) -> None:
        done = job[2].with_suffix(".json")
        try:
            run = json.loads(done.read_text()) if done.exists() else run_one(*job)
        except RuntimeError as error:  # a failed or killed run is reported, and the other runs go on
            print(error, file=sys.stderr)
            return
        with lock:  # results are written after every run, so a stopped sweep keeps what it measured
            done.write_text(json.dumps(run) + "\n")
            runs.append(run)
            write_results(args.results, runs, started, load_before, args.parallel, len(jobs))

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(finish, jobs))
    if runs:
        print(table(runs))
        print(json.dumps(summary(runs), indent=2))


def write_results(results: Path, runs: list[dict], started: str, load_before: tuple[float, ...], parallel: int,
                  planned: int) -> None:
    """``demo_stability.json`` and the table in ``demo_run.md``, for the runs finished so far."""
    stats = summary(runs)
    conditions = (f"Started {started} on a {os.cpu_count()}-core CPU, {parallel} run(s) at a time, {len(runs)} of "
                  f"{planned} planned runs finished; load average {load_before[0]:.1f} at the start and "
                  f"{os.getloadavg()[0]:.1f} at the last write (other jobs shared the machine, so wall times are "
                  "inflated; CPU-seconds are each run's own).")
    results.mkdir(parents=True, exist_ok=True)
    (results / "demo_stability.json").write_text(json.dumps(
        {"conditions": conditions, "command": "OMP_NUM_THREADS=T MKL_NUM_THREADS=T mentor demo --seed S --run-dir DIR",
         "runs": runs, "summary": stats}, indent=2) + "\n")
    write_markdown(results / "demo_run.md", runs, stats, conditions)


if __name__ == "__main__":
    sys.exit(main())
