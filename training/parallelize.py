"""The one place that turns a single-device model into a parallel one, in torchtitan's order:
tensor parallel -> activation checkpointing -> torch.compile -> data parallel (FSDP2 or DDP).

DeepSpeed ZeRO wraps the model in its own engine (training/deepspeed_engine.py) instead of the
data-parallel step here; activation checkpointing and compile still apply first.
"""

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from training.distributed import DistEnv


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block in the backward pass. The forward is replaced on the instance, so
    parameter names (and therefore checkpoints) are the same with or without it."""
    for block in model.blocks:
        inner = block.forward

        def checkpointed(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed


def apply_compile(model: nn.Module) -> None:
    for block in model.blocks:
        block.compile()


def apply_fsdp2(model: nn.Module, env: DistEnv, param_dtype: torch.dtype) -> None:
    """Shard every block, then the root (embedding, final norm, head), over all ranks."""
    mesh = init_device_mesh(env.device.type, (env.world_size,), mesh_dim_names=("dp",))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def parallelize(model: nn.Module, parallel_cfg, train_cfg, env: DistEnv,
                param_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Apply the configured parallelism to `model` (already on env.device); returns the module
    to call. With backend none and several ranks, the model is replicated with DDP.

    Example:
        >>> model = parallelize(build_model(cfg.model, cfg.ops, device), cfg.parallel, cfg.train, env)
    """
    if parallel_cfg.tp != 1:
        raise ValueError(f"parallel.tp={parallel_cfg.tp}: tensor parallelism is not available in this "
                         "version; set parallel.tp=1")
    if train_cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if train_cfg.compile:
        apply_compile(model)
    if parallel_cfg.backend == "deepspeed":
        return model  # DeepSpeed's engine partitions and reduces (training/deepspeed_engine.py)
    if parallel_cfg.backend == "fsdp2":
        apply_fsdp2(model, env, param_dtype)
    elif parallel_cfg.backend == "none" and env.distributed:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    return model
