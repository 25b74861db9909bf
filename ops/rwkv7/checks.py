"""Input validation shared by every WKV-7 entry point: errors name the argument and the fix."""

import torch


def check_wkv7_inputs(named: dict[str, torch.Tensor], initial_state: torch.Tensor | None) -> None:
    """Raise ValueError unless every tensor in `named` is a float `[B, T, H, N]` tensor with the
    shape, dtype and device of the first one, and `initial_state` (if any) is `[B, H, N, N]`."""
    (ref_name, ref), *_ = named.items()
    if not isinstance(ref, torch.Tensor) or ref.dim() != 4:
        got = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
        raise ValueError(f"wkv7: {ref_name} must be a 4-D tensor [B, T, H, N], got {got}")
    shape = tuple(ref.shape)
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"wkv7: {name} must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape) != shape:
            raise ValueError(
                f"wkv7: {name} has shape {tuple(x.shape)}, expected {shape} [B, T, H, N] like {ref_name}"
            )
        if not x.is_floating_point():
            raise ValueError(f"wkv7: {name} has dtype {x.dtype}, expected a floating dtype")
        if x.dtype != ref.dtype:
            raise ValueError(f"wkv7: {name} has dtype {x.dtype}, expected {ref.dtype} like {ref_name}")
        if x.device != ref.device:
            raise ValueError(f"wkv7: {name} is on {x.device}, expected {ref.device} like {ref_name}")
    if shape[1] == 0:
        raise ValueError("wkv7: sequence length T is 0; pass at least one token")
    if initial_state is not None:
        B, _, H, N = shape
        expected = (B, H, N, N)
        if not isinstance(initial_state, torch.Tensor) or tuple(initial_state.shape) != expected:
            got = tuple(initial_state.shape) if isinstance(initial_state, torch.Tensor) \
                else type(initial_state).__name__
            raise ValueError(
                f"wkv7: initial_state has shape {got}, expected {expected} [B, H, N_value, N_key]"
            )
        if not initial_state.is_floating_point():
            raise ValueError(f"wkv7: initial_state has dtype {initial_state.dtype}, expected float")
        if initial_state.device != ref.device:
            raise ValueError(
                f"wkv7: initial_state is on {initial_state.device}, expected {ref.device} like {ref_name}"
            )
