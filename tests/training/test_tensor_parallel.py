"""Tensor parallel over state heads (training/parallelize.py): exactness against the single-device
model for every family, the collectives each sub-layer issues, training and DCP resharding across
tp sizes, and the 2-D (dp, tp) mesh with FSDP2."""

import copy
import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file

from launch.run_config import load_run_config
from model import build_model, model_preset
from ops import OpsConfig
from training.distributed import DistEnv
from training.export import export_safetensors
from training.monitors import MetricsLog
from training.trainer import Trainer

from .conftest import TINY, free_port, run_cli

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

# (label, preset, overrides): every family, and both Meta-State inputs (u = x' split into heads
# when C_s = C, W_in x' when C_s != C) plus the learned-SSE ablation and the other readings.
MODELS = [
    ("metastate", "metastate-tiny", {}),
    ("metastate W_in", "metastate-tiny-wide", {}),
    ("metastate sse=learned", "metastate-tiny", {"sse": "learned"}),
    ("metastate own decay, no shift", "metastate-tiny", {"meta_decay": "own", "meta_shift": False}),
    ("rwkv7", "rwkv7-tiny", {}),
    ("transformer", "transformer-tiny", {}),
]


def expected_collectives(block, layer_id: int) -> dict[str, tuple[dict, dict]]:
    """Per sub-layer: (forward, backward) collective counts on the tensor-parallel mesh.

    Forward: one all-reduce per sub-layer (its row-parallel output). Backward: one all-reduce per
    column-parallel input (Megatron's f): TimeMix r, k, v and the second LoRA matrices of w, a, g
    (and v after layer 0); W_in, or an all-gather of x' when the Meta-State layer splits it into
    heads without W_in; ChannelMix's and SwiGLU's up projections; attention's q, k, v."""
    one = {"all_reduce": 1}
    if hasattr(block, "attn"):
        return {"attn": (one, {"all_reduce": 3}), "mlp": (one, {"all_reduce": 2})}
    counts = {"att": (one, {"all_reduce": 6 if layer_id == 0 else 7})}
    if hasattr(block, "ffn"):
        counts["ffn"] = (one, {"all_reduce": 1})
    elif block.meta.input is not None:
        counts["meta"] = (one, {"all_reduce": 1})
    else:
        counts["meta"] = (one, {"all_gather_into_tensor": 1})
    return counts


def named_counts(counts) -> dict[str, int]:
    return {str(op).rpartition(".")[2]: n for op, n in counts.items() if n}


def compare_with_single_device(rank: int, world: int, port: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.debug import CommDebugMode

    from training.parallelize import apply_tensor_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Full backward hook")  # CommDebugMode's module tracker
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    try:
        for label, preset, overrides in MODELS:
            torch.manual_seed(0)
            # the loss in chunks of 32 of the 80 tokens: the head is a replicated DTensor under TP
            reference = build_model(model_preset(preset, **overrides),
                                    OpsConfig(backend="chunked", loss_chunk_size=32))
            with torch.no_grad():  # leave the zero inits (W_o, W_oms, LoRA A) so every path counts
                for param in reference.parameters():
                    param.add_(0.1 * torch.randn_like(param))
            sharded = copy.deepcopy(reference)
            apply_tensor_parallel(sharded, mesh)
            assert all(isinstance(p, DTensor) for p in sharded.parameters()), label
            tokens = torch.randint(0, 256, (2, 40))
            targets = torch.randint(0, 256, (2, 40))

            logits, _ = reference(tokens)
            F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
            with torch.no_grad():
                tp_logits, _ = sharded(tokens)
            with CommDebugMode() as comm:
                tp_loss, _ = sharded(tokens, targets=targets)
                tp_loss.backward()

            torch.testing.assert_close(tp_logits, logits, rtol=1e-5, atol=1e-5, msg=label)
            torch.testing.assert_close(tp_loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten()),
                                       rtol=1e-6, atol=0, msg=label)
            reference_grads = dict(reference.named_parameters())
            for name, param in sharded.named_parameters():
                torch.testing.assert_close(param.grad.full_tensor(), reference_grads[name].grad,
                                           rtol=1e-4, atol=1e-5, msg=f"{label}: grad of {name}")
            total_forward, total_backward = {}, {}
            for layer_id, block in enumerate(sharded.blocks):
                for sub, (forward, backward) in expected_collectives(block, layer_id).items():
                    seen = comm.comm_module_counts[f"LanguageModel.blocks.{layer_id}.{sub}"]
                    where = f"{label}: blocks.{layer_id}.{sub}"
                    assert named_counts(seen["forward"]) == forward, where
                    assert named_counts(seen["backward"]) == backward, where
                    for total, counts in ((total_forward, forward), (total_backward, backward)):
                        for op, n in counts.items():
                            total[op] = total.get(op, 0) + n
            # nothing else communicates: embedding, norms and head are replicated
            assert named_counts(comm.comm_module_counts["Global"]["forward"]) == total_forward, label
            assert named_counts(comm.comm_module_counts["Global"]["backward"]) == total_backward, label
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_tp2_logits_and_gradients_equal_single_device_and_one_all_reduce_per_sublayer():
    mp.spawn(compare_with_single_device, args=(2, free_port()), nprocs=2)


def train_one_process(out_dir, *overrides):
    """The single-device run the tp runs are compared with, on one thread like each of their
    ranks (run_cli sets OMP_NUM_THREADS=1): with two threads the BLAS reduction order differs,
    and AdamW turns that round-off in near-zero gradients into lr-sized steps (one weight entry
    3e-3 apart after 5 steps on this machine's CPU)."""
    cfg = load_run_config("smoke", [*TINY, f"train.out_dir={out_dir}", *overrides])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, CPU).run()
    finally:
        torch.set_num_threads(threads)


def losses(out_dir) -> dict[int, float]:
    return {step: row["loss"] for step, row in MetricsLog.read(out_dir / "metrics.jsonl").items()}


def assert_same_losses(got: dict, expected: dict, steps) -> None:
    assert list(got) == list(steps)
    for step in steps:
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step


@pytest.mark.dist
@pytest.mark.slow
def test_tp2_trains_like_tp1_and_checkpoints_reshard_both_ways(tmp_path):
    steps = ["train.steps=5", "checkpoint.every=3", "train.eval_every=5", "train.eval_batches=1"]
    train_one_process(tmp_path / "tp1", *steps)
    proc = run_cli(["train", "smoke", *TINY, *steps, "parallel.tp=2", f"train.out_dir={tmp_path / 'tp2'}"],
                   nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_losses(losses(tmp_path / "tp2"), losses(tmp_path / "tp1"), range(1, 6))
    # both tp ranks validate on the same windows: the validation loss is the single-device one
    val_tp1, val_tp2 = (MetricsLog.read(tmp_path / run / "metrics.jsonl")[5]["val_loss"]
                        for run in ("tp1", "tp2"))
    assert val_tp2 == pytest.approx(val_tp1, abs=1e-5)
    # a tp=2 checkpoint consolidates into the same global tensors as a tp=1 one (up to Adam
    # turning round-off in near-zero gradients into steps of ~1e-5; a misplaced shard is O(0.1))
    exported = {run: load_file(str(export_safetensors(tmp_path / run))) for run in ("tp1", "tp2")}
    assert exported["tp2"].keys() == exported["tp1"].keys()
    for name, weight in exported["tp1"].items():
        torch.testing.assert_close(exported["tp2"][name], weight, rtol=1e-4, atol=1e-4)

    # tp=2 checkpoint -> tp=1 run, and tp=1 checkpoint -> tp=2 run: the same last two steps
    train_one_process(tmp_path / "from-tp2", *steps,
                      f"train.resume={tmp_path / 'tp2' / 'checkpoints' / 'step-00000003'}")
    assert_same_losses(losses(tmp_path / "from-tp2"), losses(tmp_path / "tp1"), (4, 5))
    proc = run_cli(["train", "smoke", *TINY, *steps, "parallel.tp=2",
                    f"train.out_dir={tmp_path / 'from-tp1'}",
                    f"train.resume={tmp_path / 'tp1' / 'checkpoints' / 'step-00000003'}"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_losses(losses(tmp_path / "from-tp1"), losses(tmp_path / "tp1"), (4, 5))


@pytest.mark.dist
@pytest.mark.slow
def test_tp2_by_dp2_with_fsdp2_trains_like_one_process(tmp_path, megatron_train_dir):
    # pre-tokenized data: the global batch of each step does not depend on the number of dp ranks
    common = ["train.steps=3", "data.format=megatron", f"data.train_path={megatron_train_dir}"]
    train_one_process(tmp_path / "one", *common)
    proc = run_cli(["train", "smoke", *TINY, *common, "parallel.tp=2", "parallel.dp=2",
                    "parallel.backend=fsdp2", f"train.out_dir={tmp_path / 'tp2-dp2'}"], nproc=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_losses(losses(tmp_path / "tp2-dp2"), losses(tmp_path / "one"), range(1, 4))


def test_mesh_errors_name_the_numbers_before_any_process_group_starts(tmp_path):
    from training.layout import plan_layout
    from training.preflight import preflight

    def preflight_error(world_size, *overrides):
        cfg = load_run_config("smoke", [*TINY, f"train.out_dir={tmp_path}", *overrides])
        with pytest.raises(ValueError) as caught:
            preflight(cfg, plan_layout(cfg.parallel, world_size))
        return str(caught.value)

    assert "parallel.tp=2 does not divide the world size 3" in preflight_error(3, "parallel.tp=2")
    assert ("parallel.tp=2 x parallel.dp=3 = 6 differs from the world size 4"
            in preflight_error(4, "parallel.tp=2", "parallel.dp=3", "parallel.backend=fsdp2"))
    assert "needs parallel.backend=fsdp2" in preflight_error(4, "parallel.tp=2")
    # the same through the CLI with torchrun's WORLD_SIZE but no torchrun: it would hang in
    # init_process_group if it got that far
    proc = run_cli(["train", "smoke", *TINY, f"train.out_dir={tmp_path}", "parallel.tp=2", "parallel.dp=1"],
                   env={"WORLD_SIZE": "4"}, timeout=120)
    assert proc.returncode == 2
    assert "parallel.tp=2 x parallel.dp=1 = 2 differs from the world size 4" in proc.stderr
