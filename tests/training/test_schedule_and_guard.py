import math

import pytest
import torch

from training.schedule import build_lr_scheduler, lr_multiplier
from training.stability import NonFiniteGuard, TrainingDiverged


def test_warmup_is_linear_then_cosine_reaches_floor():
    values = [lr_multiplier(s, 4, 20, 0.1) for s in range(25)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))
    assert values[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[20:] == [pytest.approx(0.1)] * 5


def test_scheduler_keeps_per_group_multipliers():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 2e-3}])
    sched = build_lr_scheduler(opt, warmup_steps=2, total_steps=10, min_lr_ratio=0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 1e-3])
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 2e-3])


def test_guard_skips_and_counts_non_finite_steps():
    guard = NonFiniteGuard(max_consecutive=3)
    assert guard.step_is_finite(2.0, 1.0)
    assert not guard.step_is_finite(float("nan"), 1.0)
    assert not guard.step_is_finite(1.0, float("inf"))
    assert guard.step_is_finite(2.0, 1.0)
    assert guard.skipped_total == 2 and guard.skipped_in_a_row == 0


def test_guard_stops_after_k_in_a_row_and_resumes_its_counts():
    guard = NonFiniteGuard(max_consecutive=2)
    assert not guard.step_is_finite(float("nan"), 0.0)
    with pytest.raises(TrainingDiverged, match="2 non-finite steps in a row at step 7"):
        guard.step_is_finite(float("nan"), 0.0, step=7)
    restored = NonFiniteGuard(max_consecutive=2)
    restored.load_state_dict(guard.state_dict())
    assert restored.skipped_total == 2
