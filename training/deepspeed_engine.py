"""DeepSpeed ZeRO stages 1-3: DeepSpeed's engine, its partitioned optimizer and its checkpoint
format, behind the same interface as TorchEngine (training/engines.py).

Checkpoints are DeepSpeed's own files, loaded weights-only (no arbitrary unpickling).
The optimizer is our torch AdamW with the official parameter groups (DeepSpeed wraps it), so no
FusedAdam/CPUAdam C++ build is needed; the lr schedule stays ours and advances every step, as in
TorchEngine. ZeRO itself skips an update whose gradients are not finite; we count it in the guard.
"""

import contextlib
import os
import sys
from pathlib import Path

import torch

from training.deepspeed_files import TAG, weights_only_load
from training.distributed import DistEnv
from training.engine_interface import EngineSetup
from training.optimizer import build_optimizer
from training.schedule import Rewarm, build_lr_scheduler
from training.stability import NonFiniteGuard
from training.train_state import load_rank_extras, save_rank_extras


def _init_deepspeed(env: DistEnv):
    import deepspeed  # noqa: F401 - imported first so that its comm module exists to patch

    # Building DeepSpeed's shared-memory all-reduce op compiles C++ for minutes on a fresh
    # machine; the torch.distributed backend works without it. (Patching the module object found
    # by `import deepspeed.comm.torch as m` does not reach the one DeepSpeed uses.)
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    if not env.distributed:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            from socket import socket

            with socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    deepspeed.init_distributed(dist_backend="nccl" if env.device.type == "cuda" else "gloo")
    return deepspeed


class DeepSpeedEngine:
    checkpoint_format = "deepspeed"

    def __init__(self, model, setup: EngineSetup):
        # `model` comes from parallelize (activation checkpointing, compile; no data parallelism)
        # parallel.tp is 1 here: ParallelConfig.problems refuses deepspeed with tp > 1
        env, accum, param_dtype = setup.env, setup.accum, setup.param_dtype
        deepspeed = _init_deepspeed(env)
        self.env, self.accum = env, accum
        oc, tc = setup.optim, setup.train
        ds_config = {
            "train_batch_size": tc.global_batch_size,
            "train_micro_batch_size_per_gpu": tc.micro_batch_size,
            "gradient_accumulation_steps": accum,
            "gradient_clipping": oc.grad_clip,
            "zero_optimization": {"stage": setup.parallel.zero_stage},
            "bf16": {"enabled": param_dtype == torch.bfloat16},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }
        # The schedule drives the torch AdamW that ZeRO wraps: ZeRO steps it with these same
        # param-group dicts, so the lr set here is the lr applied.
        self.optimizer = build_optimizer(model, oc)
        self.rewarm = Rewarm(oc.rewarm_steps)
        self.scheduler = build_lr_scheduler(self.optimizer, oc.warmup_steps, tc.steps, oc.min_lr_ratio,
                                            self.rewarm)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=self.optimizer, config=ds_config)
        self.engine.checkpoint_engine.load = weights_only_load
        self.model = self.net = self.engine
        self._micro = 0

    def accumulating(self, last_micro_batch: bool):
        return contextlib.nullcontext()  # DeepSpeed tracks the accumulation boundary itself

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps
        self._micro += 1
        if self._micro < self.accum:
            self.engine.step()  # not a boundary: DeepSpeed only counts the micro-step

    def step(self, loss: float, guard: NonFiniteGuard, step: int) -> float:
        self._micro = 0
        skipped_before = self.engine.skipped_steps
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        applied = self.engine.skipped_steps == skipped_before
        guard.step_is_finite(loss if applied else float("nan"), grad_norm, step)
        self.scheduler.step()
        return grad_norm

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save(self, directory: Path, extras: dict) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag=TAG, save_latest=False)
        save_rank_extras(directory, {**extras, "scheduler": self.scheduler.state_dict()}, self.env)

    def load(self, directory: Path) -> dict:
        load_path, _ = self.engine.load_checkpoint(str(directory / "deepspeed"), tag=TAG,
                                                   load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
        if load_path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint (tag {TAG!r}) inside")
        extras = load_rank_extras(directory, self.env)
        self.scheduler.load_state_dict(extras["scheduler"])
        return extras
