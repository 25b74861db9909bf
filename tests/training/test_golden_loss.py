"""Golden losses: ten fp32 CPU training steps of each tiny family on the embedded corpus must
reproduce the losses recorded in golden_losses.json. A silent numerical change anywhere in the stack (init,
kernels, data order, optimizer, schedule) shows up here even when every parity test still passes.

Tolerance 1e-4 nats: reassociating a sum (another chunk size, a fused op) moves these fp32 losses
by ~1e-6; a real change (a different init, data order or lr) moves them by > 1e-2. After an
intended change, regenerate with `METASTATE_UPDATE_GOLDEN=1 python -m pytest <this file>` and say
why in the commit.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from launch.run_config import load_run_config
from training.distributed import DistEnv
from training.monitors import MetricsLog
from training.trainer import Trainer

from .conftest import TINY

GOLDEN = Path(__file__).with_name("golden_losses.json")
FAMILIES = ("metastate", "rwkv7", "transformer")
TOLERANCE = 1e-4
STEPS = 10


def golden_run_losses(out_dir: Path, family: str) -> list[float]:
    cfg = load_run_config("smoke", [*TINY, f"train.steps={STEPS}", "checkpoint.every=0", "optim.lr=3e-3",
                                    "train.dtype=fp32",
                                    f"model.family={family}", f"train.out_dir={out_dir}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # one thread: the same reduction order on any machine
    try:
        Trainer(cfg, DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))).run()
    finally:
        torch.set_num_threads(threads)
    return [row["loss"] for row in MetricsLog.read(out_dir / "metrics.jsonl").values()]


@pytest.mark.parametrize("family", FAMILIES)
def test_ten_fp32_steps_reproduce_the_golden_losses(tmp_path, family):
    losses = golden_run_losses(tmp_path, family)
    if os.environ.get("METASTATE_UPDATE_GOLDEN") == "1":
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[family] = losses
        GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())[family]
    assert len(losses) == len(expected) == STEPS
    for step, (got, want) in enumerate(zip(losses, expected), start=1):
        assert abs(got - want) < TOLERANCE, f"{family} step {step}: {got} vs golden {want}"
