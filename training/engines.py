"""How one optimizer step is executed: `TorchEngine` (single process, DDP, FSDP2) or, for
DeepSpeed ZeRO, `DeepSpeedEngine` (training/deepspeed_engine.py). The trainer's loop is the same
for both: forward under `accumulating(...)`, `backward(loss)`, then `step(...)` once per step.

Both engines implement the `Engine` protocol and see only what `EngineSetup` carries
(training/engine_interface.py)."""

import contextlib
import math
from pathlib import Path

import torch

from training.engine_interface import Engine, EngineSetup
from training.optimizer import build_optimizer
from training.schedule import Rewarm, build_lr_scheduler
from training.stability import NonFiniteGuard
from training.train_state import load_train_state, save_train_state


class TorchEngine:
    """Plain PyTorch optimizer step: `net` is `model` parallelized by training/parallelize.py
(the same module under FSDP2, a DDP wrapper around it with several replicas)."""

    checkpoint_format = "dcp"

    def __init__(self, model, net, setup: EngineSetup):
        self.model, self.net, self.env, self.accum = model, net, setup.env, setup.accum
        self.optimizer = build_optimizer(model, setup.optim)
        oc = setup.optim
        self.rewarm = Rewarm(oc.rewarm_steps)
        self.scheduler = build_lr_scheduler(self.optimizer, oc.warmup_steps, setup.train.steps,
                                            oc.min_lr_ratio, self.rewarm)
        self.grad_clip = oc.grad_clip if oc.grad_clip > 0 else math.inf

    def accumulating(self, last_micro_batch: bool):
        """Reduce gradients across ranks only on the step's last micro-batch."""
        if hasattr(self.net, "set_requires_gradient_sync"):  # FSDP2
            self.net.set_requires_gradient_sync(last_micro_batch)
        if hasattr(self.net, "no_sync") and not last_micro_batch:  # DDP
            return self.net.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accum).backward()

    def step(self, loss: float, guard: NonFiniteGuard, step: int) -> float:
        """Clip, apply the update unless loss or grad-norm is non-finite, advance the lr."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        grad_norm = grad_norm.item()
        if guard.step_is_finite(loss, grad_norm, step):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return grad_norm

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save(self, directory: Path, extras: dict) -> None:
        save_train_state(directory, self.model, self.optimizer,
                         {**extras, "scheduler": self.scheduler.state_dict()}, self.env)

    def load(self, directory: Path) -> dict:
        extras = load_train_state(directory, self.model, self.optimizer, self.env)
        self.scheduler.load_state_dict(extras["scheduler"])
        return extras


def build_engine(model, net, setup: EngineSetup) -> Engine:
    """The engine of `setup.parallel.backend` over `net` = parallelize(model, ...).

    Example: build_engine(model, parallelize(model, layout, cfg.train, device), setup).step(...)
    """
    if setup.parallel.backend == "deepspeed":
        from training.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(net, setup)
    return TorchEngine(model, net, setup)
