"""Issue 18: random SIGKILLs (during checkpoint writes, between publishing a checkpoint and moving
`latest`, and between steps) plus a damaged newest checkpoint; resuming each time with
train.resume=auto ends bitwise equal to an uninterrupted run, with each step logged once."""

import os
import random
import signal
import subprocess
import sys

import torch

from tests.conftest import sigkill_after_step
from training.checkpointing import find_latest
from training.export import load_checkpoint_weights
from training.monitors import MetricsLog

from .conftest import REPO, TINY, run_cli

STEPS = 10
# What a killed process does: SIGKILL itself at a chosen point inside a save (CHAOS=where:step).
DRIVER = """
import os, signal, sys
where, at = os.environ["CHAOS"].split(":")
import training.checkpointing as ckpt
import training.train_state as state
from launch.cli import main

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if where == "write":      # DCP shards written, rank0.pt and the manifest not yet
    save_extras = state.save_rank_extras
    def save_rank_extras(directory, extras, env):
        if extras["step"] == int(at):
            die()
        save_extras(directory, extras, env)
    state.save_rank_extras = save_rank_extras
elif where == "latest":   # step-N published, `latest` still names the one before
    write_text = ckpt._write_text_atomically
    def write_latest(path, text):
        if path.name == ckpt.LATEST and text.strip() == f"step-{int(at):08d}":
            die()
        write_text(path, text)
    ckpt._write_text_atomically = write_latest
sys.exit(main(sys.argv[1:]))
"""


def train_args(out):
    return ["train", "smoke", *TINY, f"train.steps={STEPS}", "checkpoint.every=2", "checkpoint.keep_last=3",
            f"train.out_dir={out}", "train.resume=auto"]


def killed_inside_a_save(out, where, step):
    proc = subprocess.run([sys.executable, "-c", DRIVER, *train_args(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                       "CHAOS": f"{where}:{step}"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return proc


def killed_after_step(out, step):
    """SIGKILL as soon as the run reports `step` (a kill between steps, or while it saves)."""
    sigkill_after_step(train_args(out), step, REPO)


def test_random_kills_and_a_damaged_checkpoint_end_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    rng = random.Random(18)
    reference = tmp_path / "reference"
    assert run_cli(train_args(reference)).returncode == 0
    out = tmp_path / "chaos"
    killed_inside_a_save(out, "write", step=4)                       # leaves .partial-step-00000004
    killed_after_step(out, rng.choice([5, 6, 7]))                    # resumes from 2
    killed_inside_a_save(out, "latest", step=8)                      # `latest` keeps naming 6
    newest = find_latest(out / "checkpoints")                        # step-8, `latest` says older
    assert newest.name == "step-00000008"
    shard = next((newest / "dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # damaged on disk
    final = run_cli(train_args(out))
    assert final.returncode == 0, final.stderr[-3000:]
    assert "checkpoint skipped" in final.stderr and "step-00000008" in final.stderr
    assert f"resumed from {out / 'checkpoints' / 'step-00000006'}" in final.stderr

    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == STEPS  # each step once
    want, got = MetricsLog.read(reference / "metrics.jsonl"), MetricsLog.read(out / "metrics.jsonl")
    assert [got[s]["loss"] for s in range(1, STEPS + 1)] == [want[s]["loss"] for s in range(1, STEPS + 1)]
    (a, _, a_path), (b, _, b_path) = (load_checkpoint_weights(d) for d in (reference, out))
    assert a_path.name == b_path.name == f"step-{STEPS:08d}"
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name
