"""What the trainer asks of an optimizer-step engine (`Engine`), and all that an engine is given
(`EngineSetup`): its own config sections and the run's layout, never the whole run config.
TorchEngine (training/engines.py) and DeepSpeedEngine (training/deepspeed_engine.py) implement it."""

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from training.distributed import DistEnv
from training.stability import NonFiniteGuard


@dataclass(frozen=True)
class EngineSetup:
    """What an engine is built from besides the model: the `optim`, `train` and `parallel`
    sections, this process, and the step's shape."""

    optim: Any                         # OptimConfig section: AdamW, schedule, clipping
    train: Any                         # TrainConfig section: steps, batch sizes, compile, recompute
    parallel: Any                      # ParallelConfig section: backend, zero_stage
    env: DistEnv
    accum: int                         # micro-batches per optimizer step on this rank
    param_dtype: torch.dtype


@runtime_checkable
class Engine(Protocol):
    """One optimizer step's mechanics, as the trainer uses them."""

    checkpoint_format: str             # "dcp" or "deepspeed", recorded in the manifest
    net: torch.nn.Module               # the module to call (wrapped by DDP/FSDP2/DeepSpeed)
    optimizer: torch.optim.Optimizer
    scheduler: Any                     # the lr schedule (training/schedule.py)
    rewarm: Any                        # its re-warm after `metastate expand`

    def accumulating(self, last_micro_batch: bool) -> contextlib.AbstractContextManager: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self, loss: float, guard: NonFiniteGuard, step: int) -> float: ...

    @property
    def lr(self) -> float: ...

    def save(self, directory: Path, extras: dict) -> None: ...

    def load(self, directory: Path) -> dict: ...
