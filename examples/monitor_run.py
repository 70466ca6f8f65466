"""Samples a running process every 30 s into a TSV: time, process CPU seconds (user + system, its own threads and
reaped children), RSS and peak RSS (GB), and the training steps logged so far in the newest ``metrics.jsonl`` under
``run_dir``. In ``state.json`` a training stage killed and resumed counts its earlier attempts' CPU up to the
checkpoint it resumed from, an evaluation only its last attempt's; this log has all of the process's CPU.

    python examples/monitor_run.py PID /work/runs/mentor_comparison monitor.tsv &
"""

import os
import sys
import time
from pathlib import Path


def sample(pid: int) -> tuple[float, float, float]:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = sum(int(x) for x in stat[11:15]) / os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return cpu, int(status["VmRSS"].split()[0]) / 1e6, int(status["VmHWM"].split()[0]) / 1e6


def main(pid: int, run_dir: str, out: str) -> None:
    while True:
        try:
            cpu, rss, peak = sample(pid)
        except (FileNotFoundError, ProcessLookupError):
            return
        logs = list(Path(run_dir).glob("runs/*/train/*/*/metrics.jsonl"))
        newest = max(logs, key=os.path.getmtime) if logs else None
        steps = sum('"loss"' in line for line in newest.open()) if newest else 0
        with open(out, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')}\t{cpu:.1f}\t{rss:.2f}\t{peak:.2f}\t{steps}\t"
                    f"{newest.relative_to(run_dir) if newest else ''}\n")
        time.sleep(30)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
