"""Scale-out: MENTOR GRPO through the real calculator agent under `accelerate launch --num_processes 2` (DDP, gloo on
CPU) matches the single-process run with the same global batch and seed (examples/train_ddp.py)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from servers import free_port

SCRIPT = Path(__file__).parents[1] / "examples" / "train_ddp.py"
TRAIN = ["train", "--prompts-per-step", "4", "--num-generations", "4", "--steps", "4"]


def run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    spec = importlib.util.spec_from_file_location("train_ddp", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.prepare(out, sft_steps=24)
    run([sys.executable, str(SCRIPT), *TRAIN, str(out), "--name", "single"])
    run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), str(SCRIPT), *TRAIN, str(out), "--name", "ddp"])
    return out


def test_two_processes_each_roll_out_half_of_the_global_batch(runs):
    single = json.loads((runs / "single" / "rank0.json").read_text())
    assert single["processes"] == 1 and single["rollouts_per_step"] == [16] * 4
    ranks = [json.loads((runs / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["processes"] == 2 and r["backend"] == "gloo" and r["rollouts_per_step"] == [8] * 4 for r in ranks)


def test_ddp_matches_the_single_process_run(runs):
    single = json.loads((runs / "single" / "steps.json").read_text())
    ddp = json.loads((runs / "ddp" / "steps.json").read_text())
    assert [s["step"] for s in single] == [s["step"] for s in ddp] == [1, 2, 3, 4]
    # The comparison means something only if the run learns: some steps have reward spread and a gradient.
    assert sum(s["grad_norm"] > 0 for s in single) >= 2
    for a, b in zip(single, ddp):
        for key in ("reward", "reward_std", "loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key, a[key], b[key])
        # From step 2 on the gradient comes from weights that Adam moved by slightly different rounding (see below);
        # measured: 2.2e-4 relative at step 2 with torch 2.13 / accelerate 1.15.
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3, abs=1e-6), (a["step"], a["grad_norm"],
                                                                                     b["grad_norm"])

    adapter_a = load_file(runs / "single" / "mentor" / "adapter" / "adapter_model.safetensors")
    adapter_b = load_file(runs / "ddp" / "mentor" / "adapter" / "adapter_model.safetensors")
    assert adapter_a.keys() == adapter_b.keys()
    update = max(w.abs().max().item() for k, w in adapter_a.items() if "lora_B" in k)  # B starts at zero
    assert update > 1e-3
    for key in adapter_a:
        # Padding differs between the layouts (one batch of 16 vs two of 8), so logits agree to rounding, and
        # Adam can amplify rounding in near-zero gradients; measured: at most 1.8e-4 against an update of 8e-3.
        torch.testing.assert_close(adapter_b[key], adapter_a[key], rtol=0, atol=0.05 * update)


def test_the_rollout_log_holds_the_rollouts_of_every_process(runs):
    def logged(name: str) -> list[tuple[int, str, float, str]]:
        lines = (runs / name / "mentor" / "rollouts.jsonl").read_text().splitlines()
        return sorted((r["step"], r["task_id"], r["reward"], r["reason"]) for r in map(json.loads, lines))

    single, ddp = logged("single"), logged("ddp")
    assert [step for step, *_ in single] == [step for step in (1, 2, 3, 4) for _ in range(16)]
    assert ddp == single  # each group samples the same tokens on any layout (see examples/train_ddp.py)
