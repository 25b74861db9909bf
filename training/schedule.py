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


class Rewarm:
    """The lr re-warm after a state expansion (`metastate expand`): from step `start` (the
    parent's step, set when a run resumes an expanded checkpoint) the schedule's lr is scaled by
    a linear ramp (step - start + 1) / steps up to 1; before `start`, or with steps = 0, by 1.

    Example:
        >>> rewarm = Rewarm(4); rewarm.start = 100
        >>> [rewarm.factor(s) for s in (99, 100, 103, 104)]
        [1.0, 0.25, 1.0, 1.0]
    """

    def __init__(self, steps: int):
        if steps < 0:
            raise ValueError(f"optim.rewarm_steps={steps} must be >= 0 (0 = no re-warm)")
        self.steps = steps
        self.start: int | None = None

    def factor(self, step: int) -> float:
        if self.start is None or self.steps == 0 or step < self.start:
            return 1.0
        return min(1.0, (step - self.start + 1) / self.steps)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                       min_lr_ratio: float,
                       rewarm: Rewarm | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over every parameter group; per-group lr multipliers (w0 at 2x) are kept
    because LambdaLR scales each group's own initial lr. `rewarm` (read at every step) scales
    the schedule after an expansion."""
    rewarm = rewarm or Rewarm(0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(step, warmup_steps, total_steps, min_lr_ratio) * rewarm.factor(step))


def start_rewarm(scheduler: torch.optim.lr_scheduler.LambdaLR, rewarm: Rewarm, start: int) -> None:
    """Begin the re-warm at step `start` and apply it to the lr of the coming step at once (a
    resumed scheduler's groups still hold the lr computed before the re-warm was known)."""
    rewarm.start = start
    move_schedule_to(scheduler, scheduler.last_epoch)


def move_schedule_to(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put the schedule at optimizer step `step` and set every group's lr to that step's."""
    scheduler.last_epoch = step
    for group, base_lr, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * fn(step)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


OPTIMIZER_SETTINGS = ("betas", "eps", "weight_decay")


def optimizer_settings(scheduler: torch.optim.lr_scheduler.LambdaLR) -> list[dict]:
    """Per parameter group, the peak lr and AdamW settings that this run's config gave it; read
    before a resume overwrites the groups with the checkpoint's."""
    return [{"initial_lr": base, **{k: group[k] for k in OPTIMIZER_SETTINGS}}
            for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs)]


def apply_optimizer_settings(scheduler: torch.optim.lr_scheduler.LambdaLR, settings: list[dict]) -> None:
    """Put `settings` (from `optimizer_settings`) back after a resume and recompute the lr of the
    resumed step from them: a changed optim.lr, warm-up, min_lr_ratio or train.steps takes effect
    at once. With unchanged settings the lr is bitwise the one LambdaLR would give."""
    for group, wanted in zip(scheduler.optimizer.param_groups, settings):
        group.update({k: wanted[k] for k in OPTIMIZER_SETTINGS}, initial_lr=wanted["initial_lr"])
    scheduler.base_lrs = [wanted["initial_lr"] for wanted in settings]
    move_schedule_to(scheduler, scheduler.last_epoch)
