"""Input validation shared by every WKV-7 backend: errors name the argument and the fix."""

import torch


def check_wkv7_inputs(
    queries: dict[str, torch.Tensor],
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> None:
    """Raise ValueError unless all inputs are `[B, T, H, N]` floats on one device."""
    if not isinstance(k, torch.Tensor) or k.dim() != 4:
        got = tuple(k.shape) if isinstance(k, torch.Tensor) else type(k).__name__
        raise ValueError(f"wkv7: k must be a 4-D tensor [B, T, H, N], got {got}")
    shape = tuple(k.shape)
    named = {**queries, "w": w, "k": k, "v": v, "a": a, "b": b}
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"wkv7: {name} must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape) != shape:
            raise ValueError(
                f"wkv7: {name} has shape {tuple(x.shape)}, expected {shape} [B, T, H, N] like k"
            )
        if not x.is_floating_point():
            raise ValueError(f"wkv7: {name} has dtype {x.dtype}, expected a floating dtype")
        if x.dtype != k.dtype:
            raise ValueError(f"wkv7: {name} has dtype {x.dtype}, expected {k.dtype} like k")
        if x.device != k.device:
            raise ValueError(f"wkv7: {name} is on {x.device}, expected {k.device} like k")
    if shape[1] == 0:
        raise ValueError("wkv7: sequence length T is 0; pass at least one token")
    if initial_state is not None:
        B, _, H, N = shape
        expected = (B, H, N, N)
        if not isinstance(initial_state, torch.Tensor) or tuple(initial_state.shape) != expected:
            got = getattr(initial_state, "shape", type(initial_state).__name__)
            raise ValueError(
                f"wkv7: initial_state has shape {tuple(got) if hasattr(got, '__iter__') else got},"
                f" expected {expected} [B, H, N_value, N_key]"
            )
        if not initial_state.is_floating_point():
            raise ValueError(f"wkv7: initial_state has dtype {initial_state.dtype}, expected float")
        if initial_state.device != k.device:
            raise ValueError(
                f"wkv7: initial_state is on {initial_state.device}, expected {k.device} like k"
            )
