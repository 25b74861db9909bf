"""Non-finite guard: skip optimizer steps whose loss or grad-norm is NaN/inf, stop after K in a row."""

import math


class TrainingDiverged(RuntimeError):
    """Raised after `max_consecutive` non-finite steps in a row; the last checkpoint is untouched."""


class NonFiniteGuard:
    """Decides, per step, whether the update may be applied.

    Example:
        >>> guard = NonFiniteGuard(max_consecutive=5)
        >>> if guard.step_is_finite(loss.item(), grad_norm.item()): optimizer.step()
    """

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.skipped_total = 0
        self.skipped_in_a_row = 0

    def step_is_finite(self, loss: float, grad_norm: float, step: int | None = None) -> bool:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.skipped_in_a_row = 0
            return True
        self.skipped_total += 1
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= self.max_consecutive:
            at = f" at step {step}" if step is not None else ""
            raise TrainingDiverged(
                f"{self.skipped_in_a_row} non-finite steps in a row{at} (loss={loss}, grad_norm={grad_norm})"
            )  # the trainer adds which checkpoint to resume from
        return False

    def state_dict(self) -> dict:
        return {"skipped_total": self.skipped_total, "skipped_in_a_row": self.skipped_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_total = int(state["skipped_total"])
        self.skipped_in_a_row = int(state["skipped_in_a_row"])
