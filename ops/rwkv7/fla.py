"""flash-linear-attention's Triton `chunk_rwkv7` behind our interface (CUDA only).

fla computes the same recurrence with `scale=1.0`, inputs `[B, T, H, K]` and w as log-decay,
but stores the state as [B, H, K, V]: the transpose of ours ([B, H, V, K], rows = values).
It has no second-query read-out, so each extra query is one more kernel call on GPU.
"""

import importlib.util

import torch


def fla_available() -> bool:
    """True when fla and triton are importable and CUDA is present."""
    if not torch.cuda.is_available():
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("fla", "triton"))


def wkv7_fla(
    queries: tuple[torch.Tensor, ...],
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    if k.device.type != "cuda":
        raise ValueError(
            f"wkv7: backend 'fla' needs CUDA tensors, got {k.device}; use backend='chunked' on CPU"
        )
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
    except ImportError as err:
        raise ValueError(
            "wkv7: backend 'fla' needs flash-linear-attention and triton: pip install -e '.[gpu]'"
        ) from err
    fla_state = None if initial_state is None else initial_state.transpose(-1, -2).float().contiguous()
    outputs, final_state = [], None
    for q in queries:
        y, final_state = chunk_rwkv7(
            r=q, w=w, k=k, v=v, a=a, b=b, scale=1.0,
            initial_state=fla_state, output_final_state=output_final_state,
        )
        outputs.append(y)
    if output_final_state:
        final_state = final_state.transpose(-1, -2)
    return tuple(outputs), (final_state if output_final_state else None)
