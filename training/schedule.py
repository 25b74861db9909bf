"""Learning-rate schedule: linear warm-up, then cosine decay to lr * min_lr_ratio."""

import math

import torch


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Factor on the peak lr at optimizer step `step` (0-based).

    Example:
        >>> lr_multiplier(0, 10, 100, 0.1), lr_multiplier(10, 10, 100, 0.1), lr_multiplier(100, 10, 100, 0.1)
        (0.1, 1.0, 0.1)
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_lr_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                       min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over every parameter group; per-group lr multipliers (w0 at 2x) are kept
    because LambdaLR scales each group's own initial lr."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, warmup_steps, total_steps, min_lr_ratio))
