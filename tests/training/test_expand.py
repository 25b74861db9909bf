"""`metastate expand` end to end: a trained tiny run grows (2 -> 3 layers, 2 -> 4 state heads,
W_in introduced) into a checkpoint that `metastate train` continues, with the parent's function,
moments, lineage, lr re-warm and --freeze-old; from DCP, FSDP2, ZeRO and safetensors parents."""

import json
import shutil

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from launch.cli import main as cli_main
from launch.expansion import expand_checkpoint
from launch.run_config import load_run_config
from model.expand import leading_block
from training.checkpointing import find_latest, read_manifest
from training.expand import load_parent
from training.export import export_safetensors
from training.monitors import MetricsLog
from training.schedule import lr_multiplier
from training.trainer import Trainer

from .conftest import TINY, run_cli
from .test_trainer import CPU, losses, train_in_process

GROWN = """base: smoke
model: {n_layer: 3, d_model: 64, head_size: 32, d_state: 128}
data: {seq_len: 32}
train: {micro_batch_size: 2, global_batch_size: 4, eval_every: 0, log_every: 1, steps: 4}
optim: {warmup_steps: 1, rewarm_steps: 4}
tracking: {backend: none}
checkpoint: {every: 2, keep_last: 0}
"""


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A 2-layer, 2-head run stopped at step 4 of 6 (so that a copy of it can take step 5)."""
    root = tmp_path_factory.mktemp("expand")
    train_in_process(root / "parent", "train.steps=6", "train.stop_after=4")
    (root / "grown.yaml").write_text(GROWN)
    return root


def continue_run(out_dir, *overrides):
    cfg = load_run_config(out_dir / "config.yaml", list(overrides))
    trainer = Trainer(cfg, CPU)
    return trainer, trainer.run()


def test_expanded_checkpoint_keeps_function_and_moments_and_rewarms(parent, tmp_path):
    out = tmp_path / "grown"
    path = expand_checkpoint(parent / "parent", str(parent / "grown.yaml"), out, seed=1)
    assert path == out / "checkpoints" / "step-00000004"
    lineage = read_manifest(path)["lineage"]
    parent_ckpt = parent / "parent" / "checkpoints" / "step-00000004"
    assert lineage["parent_checkpoint"] == str(parent_ckpt.resolve())
    assert lineage["parent_step"] == 4 and len(lineage["parent_sha256"]) == 64
    assert lineage["config_diff"]["model.n_layer"] == ["2", "3"]
    assert lineage["config_diff"]["model.d_state"] == ["0", "128"]
    assert lineage["freeze_old"] is False

    old, new = load_parent(parent_ckpt), load_parent(path)
    for name, moments in old.moments.items():
        grown, block = new.moments[name], leading_block(old.weights[name].shape)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(grown[key][block], moments[key]), name
            rest = grown[key].clone()
            rest[block] = 0
            assert not rest.any(), f"{name}: new entries must start with zero {key}"
        assert grown["step"] == moments["step"] == 4
    assert new.moments["blocks.2.att.w0"]["step"] == 0 and not new.moments["blocks.2.att.w0"]["exp_avg"].any()

    # The parent's own next step, for comparison: same weights' function, same batch.
    shutil.copytree(parent / "parent", tmp_path / "parent-copy")
    train_in_process(tmp_path / "parent-copy", "train.steps=6", "train.resume=auto")
    trainer, _ = continue_run(out, "train.steps=6", "tracking.backend=mlflow")
    grown_losses, parent_losses = losses(out), losses(tmp_path / "parent-copy")
    assert abs(grown_losses[5] - parent_losses[5]) <= 1e-5     # logits preserved end to end
    assert grown_losses[6] != parent_losses[6]
    rows = MetricsLog.read(out / "metrics.jsonl")
    base_lr = trainer.cfg.optim.lr
    assert rows[5]["lr"] == pytest.approx(base_lr * lr_multiplier(4, 1, 6, 0.1) / 4)  # re-warm 1/4
    assert rows[6]["lr"] == pytest.approx(base_lr * lr_multiplier(5, 1, 6, 0.1) / 2)
    after = trainer.model.state_dict()
    name = "blocks.0.att.receptance.weight"
    assert not torch.equal(after[name][leading_block(old.weights[name].shape)], old.weights[name])

    latest = find_latest(out / "checkpoints")
    assert latest.name == "step-00000006" and read_manifest(latest)["lineage"]["parent_step"] == 4
    run = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}").get_run(
        read_manifest(latest)["mlflow_run_id"])
    assert run.data.tags["lineage.parent_step"] == "4"
    assert run.data.tags["lineage.parent_sha256"] == lineage["parent_sha256"]
    assert "model.d_state" in json.loads(run.data.tags["lineage.config_diff"])


def test_freeze_old_trains_only_new_entries_via_the_cli(parent, tmp_path, capsys):
    out = tmp_path / "frozen"
    assert cli_main(["expand", str(parent / "parent"), "--to", str(parent / "grown.yaml"),
                     "--output", str(out), "--freeze-old", "--seed", "2"]) == 0
    assert capsys.readouterr().out.startswith(str(out / "checkpoints" / "step-00000004"))
    assert read_manifest(find_latest(out / "checkpoints"))["lineage"]["freeze_old"] is True
    parent_weights = load_parent(parent / "parent").weights
    start = load_parent(out).weights
    trainer, _ = continue_run(out, "train.steps=6", "optim.weight_decay=0.1", "optim.rewarm_steps=0")
    after = trainer.model.state_dict()
    for name, old in parent_weights.items():
        assert torch.equal(after[name][leading_block(old.shape)], old), f"{name} moved"
    assert torch.equal(after["blocks.0.meta.input.weight"][:64], torch.eye(64))
    moved = [name for name in after if not torch.equal(after[name], start[name])]
    assert "blocks.2.att.output.weight" in moved and "blocks.0.att.output.weight" in moved
    capsys.readouterr()  # the continued run's output (it may report its changed settings on stderr)

    assert cli_main(["expand", str(parent / "parent"), "--to", "metastate-tiny", "--output",
                     str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("expand: cannot expand") and "model.vocab_size 50304 -> 256" in err
    assert "model.d_model" not in err and not (tmp_path / "x").exists()


def test_export_parent_grows_with_reset_moments(parent, tmp_path):
    exported = export_safetensors(parent / "parent", tmp_path / "parent.safetensors")
    with pytest.raises(ValueError, match="--config"):
        expand_checkpoint(exported, "metastate-450m", tmp_path / "a")
    path = expand_checkpoint(exported, str(parent / "grown.yaml"), tmp_path / "grown")
    lineage = read_manifest(path)["lineage"]
    assert lineage["optimizer_moments"].startswith("reset") and lineage["parent_step"] == 4
    weights = load_file(str(exported))
    grown = load_parent(path).weights
    for name, tensor in weights.items():
        assert torch.equal(grown[name][leading_block(tensor.shape)], tensor), name
    continue_run(tmp_path / "grown", "train.steps=5")
    assert sorted(losses(tmp_path / "grown")) == [5]


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["fsdp2", "deepspeed"])
def test_sharded_parents_grow(backend, parent, tmp_path):
    run = tmp_path / backend
    # 3 steps: W_o = 0 at init, so the LoRA second factors first get a gradient at step 3
    proc = run_cli(["train", "smoke", *TINY, f"train.out_dir={run}", "train.steps=3",
                    f"parallel.backend={backend}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = load_file(str(export_safetensors(run)))
    path = expand_checkpoint(run, str(parent / "grown.yaml"), tmp_path / "grown")
    grown = load_parent(path)
    for name, tensor in weights.items():
        assert torch.equal(grown.weights[name][leading_block(tensor.shape)], tensor), name
    assert read_manifest(path)["lineage"]["optimizer_moments"].startswith("kept")
    for name, tensor in weights.items():   # moments gathered from the shards, zero-padded
        for key in ("exp_avg", "exp_avg_sq"):
            moment = grown.moments[name][key]
            assert moment[leading_block(tensor.shape)].any(), f"{name}.{key} lost"
            rest = moment.clone()
            rest[leading_block(tensor.shape)] = 0
            assert not rest.any()
        assert grown.moments[name]["step"] == 3
    continue_run(tmp_path / "grown", "train.steps=4")
    assert sorted(losses(tmp_path / "grown")) == [4]
