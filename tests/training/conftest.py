import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A model and batch small enough for 2 gloo ranks on 2 cores; real text from the embedded corpus.
TINY = ["model.n_layer=2", "model.d_model=64", "model.head_size=32", "data.seq_len=32",
        "train.micro_batch_size=2", "train.global_batch_size=4", "train.eval_every=0",
        "train.log_every=1", "optim.warmup_steps=1", "tracking.backend=none", "checkpoint.every=2",
        "checkpoint.keep_last=0"]


def run_cli(args, nproc=1, timeout=600, env=None):
    """`metastate ...` in a subprocess; under torchrun (gloo, loopback) when nproc > 1."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "launch.cli", *args]
    else:
        cmd = [sys.executable, "-m", "launch.cli", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def train_in_process(out_dir, *overrides):
    """One single-process run of the tiny smoke config in this process; returns the Trainer."""
    import torch

    from launch.run_config import load_run_config
    from training.distributed import DistEnv
    from training.trainer import Trainer

    cfg = load_run_config("smoke", [*TINY, f"train.out_dir={out_dir}", *overrides])
    trainer = Trainer(cfg, DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    trainer.run()
    return trainer


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiny_overrides():
    return list(TINY)


@pytest.fixture(scope="session")
def megatron_train_dir(tmp_path_factory):
    """One embedded shard preprocessed to .bin/.idx: its sample order is a pure function of the
    global sample index, so runs on different world sizes see the same global batches."""
    out = tmp_path_factory.mktemp("megatron")
    proc = run_cli(["preprocess", "--input", str(REPO / "data/embedded/train/00.jsonl.zst"),
                    "--output", str(out), "--format", "megatron", "--no-progress", "--workers", "1"])
    assert proc.returncode == 0, proc.stderr
    return out
