"""The one place that turns a single-device model into a parallel one, in torchtitan's order:
tensor parallel -> activation checkpointing -> torch.compile -> data parallel (FSDP2 or DDP).

Tensor parallelism splits the state heads over `parallel.tp` ranks (Megatron's pattern with
torch DTensor plans; the layout is drawn in docs/parallelism.md). With `parallel.dp` data-parallel
groups the ranks form a 2-D DeviceMesh ("dp", "tp"): rank = dp_index * tp + tp_index, TP inside
a group of neighbouring ranks and FSDP2 across groups. DeepSpeed ZeRO wraps the model in its own
engine (training/deepspeed_engine.py) instead of the data-parallel step here and runs with tp = 1.
The mesh itself is built once per process with the layout (training/layout.py).
"""

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from training.layout import ParallelLayout

# ------------------------------------------------------------------ tensor parallel


class OwnParameters(ParallelStyle):
    """A module's own parameters (not its children's) as DTensors on the tensor-parallel mesh:
    those named in `shard_dims` split along that dimension (whole heads per rank), the others
    replicated. The module's forward reads them through model/sharding.py."""

    def __init__(self, shard_dims: dict[str, int] | None = None):
        super().__init__()
        self.shard_dims = shard_dims or {}

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        for name, param in list(module.named_parameters(recurse=False)):
            placement = Shard(self.shard_dims[name]) if name in self.shard_dims else Replicate()
            dtensor = distribute_tensor(param.detach(), device_mesh, [placement],
                                        src_data_rank=self.src_data_rank)
            module.register_parameter(name, nn.Parameter(dtensor, requires_grad=param.requires_grad))
        return module


class Replicated(ParallelStyle):
    """A module that every tensor-parallel rank runs whole (norms, embedding, head): parameters
    replicated DTensors, inputs and outputs plain tensors. It communicates nothing."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        def to_dtensor(_module, inputs, mesh):
            return tuple(DTensor.from_local(t, mesh, [Replicate()], run_check=False)
                         if isinstance(t, torch.Tensor) and not isinstance(t, DTensor) else t
                         for t in inputs)

        def to_local(_module, output, _mesh):
            return output.to_local() if isinstance(output, DTensor) else output

        return distribute_module(module, device_mesh, input_fn=to_dtensor, output_fn=to_local)


PER_HEAD = {"weight": 0, "bias": 0}   # GroupNorm over heads: one affine entry per state channel
TIME_MIX_SHARDS = {"w0": 0, "a0": 0, "v0": 0, "k_k": 0, "k_a": 0, "r_k": 0,   # [C_s] or [H, N]
                   "w2": 1, "a2": 1, "v2": 1, "g2": 1}                         # LoRA [rank, C_s]


def rwkv_block_plan(block: nn.Module) -> dict[str, ParallelStyle]:
    """Megatron's pattern over state heads: r/k/v, W_in and the LoRAs' second matrices
    column-parallel, W_o and W_oms row-parallel (one all-reduce each in the forward pass)."""
    plan: dict[str, ParallelStyle] = {
        "ln1": Replicated(), "ln2": Replicated(),
        "att": OwnParameters(TIME_MIX_SHARDS),
        "att.receptance": ColwiseParallel(), "att.key": ColwiseParallel(),
        "att.value": ColwiseParallel(), "att.output": RowwiseParallel(),
        "att.ln_x": OwnParameters(PER_HEAD),
    }
    if hasattr(block, "ln0"):
        plan["ln0"] = Replicated()
    if hasattr(block, "ffn"):   # rwkv7 ChannelMix: the standard MLP split
        plan.update({"ffn": OwnParameters(), "ffn.key": ColwiseParallel(),
                     "ffn.value": RowwiseParallel()})
    else:
        # sse_weight [H_s, N, N] and the own decay bias w0 [C_s] (meta_decay=own) split by head
        plan.update({"meta": OwnParameters({"sse_weight": 0, "w0": 0}), "meta.output": RowwiseParallel(),
                     "meta.ln_out": OwnParameters(PER_HEAD)})
        if block.meta.input is not None:
            plan["meta.input"] = ColwiseParallel()
    return plan


def transformer_block_plan(block: nn.Module) -> dict[str, ParallelStyle]:
    """Megatron's attention/MLP split: q/k/v and gate/up column-parallel, o and down row-parallel."""
    return {"attn_norm": Replicated(), "mlp_norm": Replicated(),
            "attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(), "attn.wv": ColwiseParallel(),
            "attn.wo": RowwiseParallel(),
            "mlp.w1": ColwiseParallel(), "mlp.w3": ColwiseParallel(), "mlp.w2": RowwiseParallel()}


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Split every block over `tp_mesh`; embedding, final norm and head stay replicated (the
    loss sees whole logits, no vocab-parallel cross-entropy). Every parameter ends up a DTensor,
    so DCP saves global tensors and a tp=2 checkpoint loads at tp=1 and the reverse."""
    for block in model.blocks:
        plan = rwkv_block_plan(block) if hasattr(block, "att") else transformer_block_plan(block)
        parallelize_module(block, tp_mesh, plan)
    parallelize_module(model, tp_mesh, {"emb": Replicated(), "ln_out": Replicated(),
                                        "head": Replicated()})
    missed = [name for name, p in model.named_parameters() if not isinstance(p, DTensor)]
    if missed:
        raise RuntimeError(f"tensor parallel: no plan covers {', '.join(missed[:5])}; add them to "
                           f"the block plans in training/parallelize.py")


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block in the backward pass. The forward is replaced on the instance, so
    parameter names (and therefore checkpoints) are the same with or without it."""
    for block in model.blocks:
        inner = block.forward

        def checkpointed(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed


def apply_compile(model: nn.Module) -> None:
    # torch 2.13's AOT-autograd cache segfaulted while pickling the blocks' graphs (whose chunked
    # WKV op runs eagerly behind a graph break) and once read back an entry with garbage shapes;
    # inductor's own FX-graph cache stays on, so warm restarts still skip most codegen.
    import torch._functorch.config as functorch_config

    functorch_config.enable_autograd_cache = False
    for block in model.blocks:
        block.compile()


def apply_fsdp2(model: nn.Module, mesh: DeviceMesh, param_dtype: torch.dtype) -> None:
    """Shard every block, then the root (embedding, final norm, head), over the dp mesh."""
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def parallelize(model: nn.Module, layout: ParallelLayout, train_cfg, device: torch.device,
                param_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Apply `layout` (its mesh built, training/layout.py) to `model` (already on `device`);
    returns the module to call. With backend none, tp = 1 and several ranks, the model is
    replicated with DDP.

    Example:
        >>> model = parallelize(build_model(cfg.model, cfg.ops, device), layout, cfg.train, device)
    """
    if layout.tp_size > 1:
        apply_tensor_parallel(model, layout.tp_mesh)
    if train_cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if train_cfg.compile:
        apply_compile(model)
    if layout.backend == "deepspeed":
        return model  # DeepSpeed's engine partitions and reduces (training/deepspeed_engine.py)
    if layout.backend == "fsdp2":
        apply_fsdp2(model, layout.dp_mesh, param_dtype)
    elif layout.backend == "none" and layout.dp_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    return model
