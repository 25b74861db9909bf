"""DeepSpeed's checkpoint files, read without arbitrary unpickling: the one weights-only
`torch.load`, the one (scoped) swap of the global `torch.load` that DeepSpeed's ZeRO-to-fp32 tool
needs, and the consolidation of ZeRO partitions into full weights and AdamW moments. Used by the
engine (training/deepspeed_engine.py), `metastate export` and `metastate expand`.
"""

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch

TAG = "state"  # one DeepSpeed tag per checkpoint directory; the step lives in the directory name
MOMENTS = ("exp_avg", "exp_avg_sq")

_TORCH_LOAD = torch.load


def weights_only_load(path, map_location=None):
    """torch.load for DeepSpeed's checkpoint files without arbitrary unpickling: besides tensors
    and containers they hold a few plain DeepSpeed records (loss scaler, ZeRO-stage enum,
    partition addresses), allow-listed here."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    torch.serialization.add_safe_globals([LossScaler, ZeroStageEnum, fragment_address])
    return _TORCH_LOAD(path, map_location=map_location, weights_only=True)


@contextlib.contextmanager
def weights_only_torch_load(transform: Callable = lambda state: state):
    """Within the block, every torch.load is weights-only, its result passed through `transform`
    (for DeepSpeed tools that hard-code weights_only=False, such as ZeRO-to-fp32)."""
    torch.load = lambda f, map_location=None, **_: transform(weights_only_load(f, map_location))
    try:
        yield
    finally:
        torch.load = _TORCH_LOAD


def consolidate_zero(path: Path, transform: Callable = lambda state: state) -> dict[str, torch.Tensor]:
    """Gather a ZeRO 1/2/3 checkpoint's partitions into full fp32 weights (DeepSpeed's own tool,
    with its file reads forced to weights-only and passed through `transform`).

    Example: consolidate_zero(Path("runs/ds/checkpoints/step-00000010"))["emb.weight"].shape
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with weights_only_torch_load(transform):
        return get_fp32_state_dict_from_zero_checkpoint(str(path / "deepspeed"), tag=TAG)


def zero_moments(path: Path, weights: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Per-parameter AdamW moments of a ZeRO 1/2/3 checkpoint: DeepSpeed's own consolidation
    run over each moment's flat partitions in place of the fp32 weights', which have the same
    layout (the moments' trailing alignment padding cut off)."""
    gathered, steps = {}, []
    for moment in MOMENTS:
        gathered[moment] = consolidate_zero(
            path, lambda state, _moment=moment: _moment_as_weights(state, _moment, steps))
    step = torch.tensor(float(steps[0]) if steps else 0.0)
    return {name: {"exp_avg": gathered["exp_avg"][name].detach(),
                   "exp_avg_sq": gathered["exp_avg_sq"][name].detach(), "step": step.clone()}
            for name in weights}


def _moment_as_weights(state, moment: str, steps: list):
    optim = state.get("optimizer_state_dict") if isinstance(state, dict) else None
    if not isinstance(optim, dict):
        return state   # a model-states file
    if "fp32_flat_groups" in optim:                        # ZeRO-3
        key, base = "fp32_flat_groups", optim["optimizer_state_dict"]
    else:                                                  # ZeRO-1/2
        key, base = "single_partition_of_fp32_groups", optim["base_optimizer_state"]
    groups = base if isinstance(base, list) else [base["state"][i] for i in sorted(base["state"])]
    steps.append(groups[0]["step"])
    optim[key] = [group[moment].reshape(-1)[: flat.numel()] for group, flat in zip(groups, optim[key])]
    return state
