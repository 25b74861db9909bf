"""Process-group setup from torchrun's environment; single-process runs need none."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a small tensor over ranks (a copy; the argument is not modified)."""
        values = values.detach().clone().to(self.device)
        if self.distributed:
            dist.all_reduce(values)
        return values

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on at least one."""
        return bool(self.all_reduce_sum(torch.tensor([float(flag)])).item() > 0)


def init_distributed() -> DistEnv:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    gloo on CPU, nccl on CUDA; each rank uses the GPU of its LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
