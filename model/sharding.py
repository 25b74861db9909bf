"""How single-device model code reads parameters that tensor parallelism may have split.

`training/parallelize.py` turns every parameter into a DTensor: what belongs to state heads is
split by whole heads over the tensor-parallel ranks, the rest is replicated (docs/parallelism.md).
Each rank then runs the model's ordinary code on plain tensors that hold only its own heads. That
needs two habits from the model, and nothing else:
- head counts come from tensor sizes (`view(B, T, -1, N)`), never from the config;
- a parameter that the module uses directly (not through an nn.Linear, which torch's
  ColwiseParallel/RowwiseParallel handle) is read through the helpers below.
On one device, and under FSDP alone, every helper is the identity or the plain operation.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter (its heads, or all of a replicated one); the gradient
    flows back into the DTensor parameter. A plain tensor is returned as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def matmul_columns(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight for weight [in, out] (a LoRA's second matrix) and an x that every rank holds.

    When weight is split by output columns (heads), the result is this rank's columns, and x's
    gradient is summed over the ranks (Megatron's f: identity forward, all-reduce backward), so
    the replicated computation that produced x gets the gradient of all heads."""
    if not isinstance(weight, DTensor):
        return x @ weight
    replicated = DTensor.from_local(x, weight.device_mesh, [Replicate()] * weight.device_mesh.ndim,
                                    run_check=False)
    return (replicated @ weight).to_local()


def local_columns(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The columns of x [..., C_s] (held by every rank) that belong to this rank's heads, split
    the way the per-channel parameter `like` [C_s] is. The backward gathers x's gradient."""
    if not isinstance(like, DTensor):
        return x
    mesh = like.device_mesh
    split = [Shard(x.dim() - 1) if isinstance(p, Shard) else Replicate() for p in like.placements]
    replicated = DTensor.from_local(x, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return replicated.redistribute(mesh, split).to_local()


def group_norm_heads(norm: nn.GroupNorm, y: torch.Tensor) -> torch.Tensor:
    """`norm` (one group per head, affine per channel) over y [B, T, H, N]; H may be this rank's
    share of the heads, so the group count is read from y rather than from `norm`."""
    B, T, H, N = y.shape
    out = F.group_norm(y.reshape(B * T, H * N), H, local(norm.weight), local(norm.bias), norm.eps)
    return out.view(B, T, H, N)
