"""End-to-end training runs: exact resume, reshard on resume, tracking, the non-finite guard."""

import pytest
import torch
from safetensors.torch import load_file

from training.checkpointing import find_latest, read_manifest
from training.distributed import DistEnv
from training.export import export_safetensors
from training.monitors import MetricsLog

from .conftest import TINY, run_cli, train_in_process

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def losses(out_dir):
    return {step: row["loss"] for step, row in MetricsLog.read(out_dir / "metrics.jsonl").items()}


def test_single_process_resume_is_bitwise_exact(tmp_path):
    full = train_in_process(tmp_path / "full", "train.steps=4")
    train_in_process(tmp_path / "split", "train.steps=4", "train.stop_after=2")
    assert find_latest(tmp_path / "split" / "checkpoints").name == "step-00000002"
    resumed = train_in_process(tmp_path / "split", "train.steps=4", "train.resume=auto")
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert list(losses(tmp_path / "full")) == [1, 2, 3, 4]


def test_loss_falls_and_checkpoint_exports_to_safetensors(tmp_path):
    trainer = train_in_process(tmp_path / "run", "train.steps=12", "optim.lr=3e-3", "checkpoint.every=6")
    history = losses(tmp_path / "run")
    assert sum(history[s] for s in (10, 11, 12)) < sum(history[s] for s in (1, 2, 3)) - 0.5
    proc = run_cli(["export", str(tmp_path / "run"), "--format", "safetensors"])
    assert proc.returncode == 0, proc.stderr
    weights = load_file(proc.stdout.strip())
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(weights[name], tensor), name
    manifest = read_manifest(find_latest(tmp_path / "run" / "checkpoints"))
    assert manifest["step"] == 12 and manifest["config"]["model"]["d_model"] == 64


def test_non_finite_guard_stops_with_last_good_checkpoint(tmp_path):
    out = tmp_path / "diverge"
    proc = run_cli(["train", "smoke", *TINY, f"train.out_dir={out}", "train.steps=8", "optim.lr=1e6",
                    "optim.grad_clip=0", "train.max_bad_steps=2", "checkpoint.every=1"])
    assert proc.returncode == 3, proc.stderr
    assert "non-finite steps in a row" in proc.stderr
    rows = MetricsLog.read(out / "metrics.jsonl")
    first_skip = min(step for step, row in rows.items() if row["skipped_steps"] == 1)
    assert max(rows) == first_skip  # the second bad step in a row raises before it is logged
    # the weights saved before the streak produced it: that checkpoint and later ones are set
    # aside, so the one resume=auto picks is the last whose next step was finite
    latest = find_latest(out / "checkpoints")
    assert latest.name == f"step-{first_skip - 2:08d}"
    assert (out / "checkpoints" / f"diverged-step-{first_skip - 1:08d}").is_dir()
    weights = load_file(str(export_safetensors(latest)))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_config_errors_fail_before_any_process_starts(tmp_path):
    # WORLD_SIZE as torchrun would set it; the check runs before init_process_group would block
    proc = run_cli(["train", "smoke", *TINY, f"train.out_dir={tmp_path}"], env={"WORLD_SIZE": "3"})
    assert proc.returncode == 2
    assert "train.global_batch_size=4 is not a multiple of train.micro_batch_size=2 x 3" in proc.stderr
    proc = run_cli(["train", "smoke", *TINY, "data.train_path=/nonexistent/*.jsonl.zst"])
    assert proc.returncode == 2 and "/nonexistent" in proc.stderr
    proc = run_cli(["train", "smoke", *TINY, f"train.resume={tmp_path / 'nothing'}"])
    assert proc.returncode == 2 and "no such checkpoint" in proc.stderr
    train_in_process(tmp_path / "dcp-run", "train.steps=1")
    proc = run_cli(["train", "smoke", *TINY, f"train.out_dir={tmp_path / 'dcp-run'}", "train.resume=auto",
                    "parallel.backend=deepspeed"])
    assert proc.returncode == 2 and "is a dcp checkpoint but parallel.backend=deepspeed" in proc.stderr


@pytest.mark.dist
@pytest.mark.slow
def test_fsdp2_two_ranks_resume_exact_and_reshards_to_one_rank(tmp_path, megatron_train_dir):
    data = ["data.format=megatron", f"data.train_path={megatron_train_dir}"]
    common = ["train", "smoke", *TINY, *data, "parallel.backend=fsdp2", "train.steps=4"]
    full = run_cli([*common, f"train.out_dir={tmp_path / 'full'}"], nproc=2)
    assert full.returncode == 0, full.stderr[-3000:]
    split = run_cli([*common, f"train.out_dir={tmp_path / 'split'}", "train.stop_after=2"], nproc=2)
    assert split.returncode == 0, split.stderr[-3000:]
    resumed = run_cli([*common, f"train.out_dir={tmp_path / 'split'}", "train.resume=auto"], nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path / "full") == losses(tmp_path / "split")

    one_rank = tmp_path / "one-rank"
    resume_from = tmp_path / "split" / "checkpoints" / "step-00000002"
    single = run_cli(["train", "smoke", *TINY, *data, "train.steps=4", f"train.out_dir={one_rank}",
                      f"train.resume={resume_from}"])
    assert single.returncode == 0, single.stderr[-3000:]
    for step in (3, 4):
        assert losses(one_rank)[step] == pytest.approx(losses(tmp_path / "full")[step], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_mlflow_server_receives_the_run_and_a_resumed_run_continues_it(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    mlflow_server.start()
    tracking = ["tracking.backend=mlflow", f"tracking.uri={mlflow_server.uri}", "tracking.experiment=trainer",
                "train.steps=4"]
    first = train_in_process(tmp_path / "run", *tracking, "train.stop_after=2")
    second = train_in_process(tmp_path / "run", *tracking, "train.resume=auto")
    assert first.tracker.run_id == second.tracker.run_id
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(first.tracker.run_id)
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert history == sorted(losses(tmp_path / "run").items())  # each step once, no duplicates
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.002" and run.data.params["train.steps"] == "4"
    assert run.data.tags["family"] == "metastate" and run.data.tags["world_size"] == "1"
    assert run.data.tags["preset"] == "custom" and run.data.tags["metastate.resumed"] == "true"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts and "checkpoints" in artifacts
    manifests = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert manifests == {"checkpoints/step-00000002.json", "checkpoints/step-00000004.json"}


def test_activation_checkpointing_gives_identical_losses(tmp_path):
    plain = train_in_process(tmp_path / "plain", "train.steps=2")
    recomputed = train_in_process(tmp_path / "ac", "train.steps=2", "train.activation_checkpointing=true")
    assert losses(tmp_path / "plain") == losses(tmp_path / "ac")
    for (name, a), b in zip(plain.model.state_dict().items(), recomputed.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_ones(tmp_path):
    # torch.compile (inductor, C++ on CPU) per block: the same losses up to kernel-fusion round-off
    train_in_process(tmp_path / "eager", "train.steps=2", "model.n_layer=1")
    train_in_process(tmp_path / "compiled", "train.steps=2", "model.n_layer=1", "train.compile=true")
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert list(compiled) == [1, 2]
    for step in (1, 2):
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4)


def test_fused_chunked_loss_trains_like_whole_batch_logits(tmp_path):
    """64 tokens per micro-batch in loss chunks of 24 (the last one 16) vs plain [B, T, V] logits:
    the losses of 3 steps agree to 1e-6 relative (fp32 summation order only)."""
    train_in_process(tmp_path / "plain", "train.steps=3", "ops.loss_chunk_size=0")
    train_in_process(tmp_path / "fused", "train.steps=3", "ops.loss_chunk_size=24")
    plain, fused = losses(tmp_path / "plain"), losses(tmp_path / "fused")
    assert list(fused) == [1, 2, 3]
    for step in plain:
        assert abs(fused[step] - plain[step]) <= 1e-6 * plain[step], step


def test_a_batch_with_ids_outside_the_vocabulary_is_refused_before_the_model(tmp_path):
    """The model no longer range-checks ids (a GPU sync per forward); the trainer checks each
    host batch once, so a corrupt shard gives a one-line error, not an index error or device assert."""
    trainer = train_in_process(tmp_path / "run", "train.steps=1")
    vocab = trainer.cfg.model.vocab_size
    bad = torch.tensor([[1, 2, vocab, 3]])
    with pytest.raises(ValueError, match=rf"training batch: token id {vocab} is outside the vocabulary"):
        trainer.train_step([{"tokens": bad}])
