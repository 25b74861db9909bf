"""DeepSpeed ZeRO runs on 2 gloo ranks: exact resume, every stage trains/saves/loads, export."""

import pytest
import torch
from safetensors.torch import load_file

from training.export import export_safetensors
from training.monitors import MetricsLog

from .conftest import TINY, run_cli

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def losses(out_dir):
    return {step: row["loss"] for step, row in MetricsLog.read(out_dir / "metrics.jsonl").items()}


def zero(stage, megatron_train_dir, out_dir, *extra):
    args = ["train", "smoke", *TINY, "data.format=megatron", f"data.train_path={megatron_train_dir}",
            "parallel.backend=deepspeed", f"parallel.zero_stage={stage}", f"train.out_dir={out_dir}", *extra]
    proc = run_cli(args, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_zero2_resume_is_bitwise_exact(tmp_path, megatron_train_dir):
    zero(2, megatron_train_dir, tmp_path / "full", "train.steps=4")
    zero(2, megatron_train_dir, tmp_path / "split", "train.steps=4", "train.stop_after=2")
    zero(2, megatron_train_dir, tmp_path / "split", "train.steps=4", "train.resume=auto")
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    assert list(losses(tmp_path / "full")) == [1, 2, 3, 4]
    full = load_file(str(export_safetensors(tmp_path / "full")))
    split = load_file(str(export_safetensors(tmp_path / "split")))
    assert full.keys() == split.keys()
    for name in full:
        assert torch.equal(full[name], split[name]), name


@pytest.mark.parametrize("stage", [1, 3])
def test_zero_stage_trains_saves_and_resumes(tmp_path, megatron_train_dir, stage):
    out = tmp_path / f"zero{stage}"
    zero(stage, megatron_train_dir, out, "train.steps=2", "train.stop_after=1", "checkpoint.every=1")
    zero(stage, megatron_train_dir, out, "train.steps=2", "train.resume=auto", "checkpoint.every=1")
    assert sorted(losses(out)) == [1, 2]
    weights = load_file(str(export_safetensors(out)))
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
