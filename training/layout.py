"""How the ranks of a run are arranged: data-parallel groups x tensor-parallel ranks, decided once
per process from the `parallel` section and the world size, then handed to the trainer, the data
streams, the engines and `parallelize`.

rank = dp_rank * tp_size + tp_rank: the tensor-parallel ranks of one group are neighbours (one
node) and read the same batches. Planning needs no torch (the command line and `metastate
submit --dry-run` check a layout on a login node); `with_mesh` adds the DeviceMesh once the
process group exists.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParallelLayout:
    dp_size: int                       # data-parallel groups
    tp_size: int                       # tensor-parallel ranks per group
    backend: str = "none"              # parallel.backend: none | fsdp2 | deepspeed
    rank: int = 0                      # this process's global rank
    mesh: Any = None                   # DeviceMesh ("dp", "tp") or ("dp",); None when not needed

    @property
    def world_size(self) -> int:
        return self.dp_size * self.tp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp_size

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def tp_mesh(self):
        """The tensor-parallel dimension of the mesh (None with tp = 1)."""
        return self.mesh["tp"] if self.tp_size > 1 else None

    @property
    def dp_mesh(self):
        """The data-parallel dimension of the mesh (None when no mesh was built)."""
        if self.mesh is None:
            return None
        return self.mesh["dp"] if self.tp_size > 1 else self.mesh

    def with_mesh(self, device_type: str) -> "ParallelLayout":
        """This layout with its DeviceMesh: 2-D ("dp", "tp") under tensor parallelism, 1-D ("dp",)
        for FSDP2, none otherwise (DDP and DeepSpeed use the default process group)."""
        from torch.distributed.device_mesh import init_device_mesh

        if self.tp_size > 1:
            mesh = init_device_mesh(device_type, (self.dp_size, self.tp_size), mesh_dim_names=("dp", "tp"))
        elif self.backend == "fsdp2":
            mesh = init_device_mesh(device_type, (self.dp_size,), mesh_dim_names=("dp",))
        else:
            return self
        return dataclasses.replace(self, mesh=mesh)


def plan_layout(parallel_cfg, world_size: int, rank: int = 0) -> ParallelLayout:
    """The layout of `world_size` processes; ValueError naming the numbers when they disagree.

    Example: plan_layout(cfg.parallel, 4).dp_size == 2 for parallel.tp=2, parallel.dp=-1
    """
    tp = parallel_cfg.tp
    if tp < 1 or world_size % tp:
        raise ValueError(f"parallel.tp={tp} does not divide the world size {world_size}; launch a "
                         f"multiple of {tp} processes or change parallel.tp")
    dp = world_size // tp if parallel_cfg.dp == -1 else parallel_cfg.dp
    if dp * tp != world_size:
        raise ValueError(f"parallel.tp={tp} x parallel.dp={dp} = {tp * dp} differs from the world "
                         f"size {world_size}; launch {tp * dp} processes or set parallel.dp=-1")
    if tp > 1 and dp > 1 and parallel_cfg.backend != "fsdp2":
        raise ValueError(f"parallel.tp={tp} with {dp} data-parallel groups needs "
                         f"parallel.backend=fsdp2 (FSDP2 over the dp dimension of the 2-D mesh)")
    return ParallelLayout(dp, tp, parallel_cfg.backend, rank)
