"""flash-linear-attention's Triton `chunk_rwkv7` behind our interface (CUDA; CPU under Triton's
interpreter, for tests).

fla computes the same recurrence with `scale=1.0`, inputs `[B, T, H, K]` and w as log-decay,
but stores the state as [B, H, K, V]: the transpose of ours ([B, H, V, K], rows = values).
It has no second-query read-out, so each extra query is one more kernel call on GPU.

fla's default is a chunk-16 path that stays in fp32 range for any log-decay. RWKV-7's decay is
bounded, w >= -e^{-1/2} (DESIGN.md 1), and fla then licenses its tensor-core chunk-64 scheme
(`safe_gate=True, lower_bound=...`): exact while (L/2 + 1) |w| log2(e) <= 124, i.e. |w| <= 2.6
per step at L = 64, four times RWKV-7's bound. That is the call we make; versions of fla without
those arguments get the default call.
"""

import importlib.util
import inspect

import torch

from ops.rwkv7.triton_interpreter import enable as enable_interpreter
from ops.rwkv7.triton_interpreter import interpreter_on

RWKV7_LOG_DECAY_MIN = -0.6065306597126334   # -e^{-1/2}: w = -e^{-1/2} sigmoid(.) in RWKV-7
FAST_CHUNK_SIZE = 64


def fla_available() -> bool:
    """True when fla and triton are importable and CUDA is present."""
    if not torch.cuda.is_available():
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("fla", "triton"))


def fla_call_settings(chunk_rwkv7, fast: bool = True) -> dict:
    """The keyword arguments that select fla's fast RWKV-7 path, as far as this fla has them."""
    if not fast:
        return {}
    params = inspect.signature(chunk_rwkv7).parameters
    settings = {}
    if "safe_gate" in params:
        settings["safe_gate"] = True
        if "chunk_size" in params:
            settings["chunk_size"] = FAST_CHUNK_SIZE
    if "lower_bound" in params:
        settings["lower_bound"] = RWKV7_LOG_DECAY_MIN
    return settings


def _load_chunk_rwkv7(device: torch.device):
    if device.type != "cuda":
        if not (device.type == "cpu" and interpreter_on()):
            raise ValueError(f"wkv7: backend 'fla' needs CUDA tensors, got {device}; use "
                             "backend='chunked' on CPU (or TRITON_INTERPRET=1 to test fla's kernels)")
    try:
        if device.type == "cpu":
            enable_interpreter()
        from fla.ops.rwkv7 import chunk_rwkv7
    except ImportError as err:
        raise ValueError(
            "wkv7: backend 'fla' needs flash-linear-attention and triton: pip install -e '.[gpu]'"
        ) from err
    return chunk_rwkv7


def wkv7_fla(
    queries: tuple[torch.Tensor, ...],
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    fast: bool = True,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """fla's chunk_rwkv7 read by every query; w must lie in RWKV-7's range when `fast`."""
    chunk_rwkv7 = _load_chunk_rwkv7(k.device)
    settings = fla_call_settings(chunk_rwkv7, fast)
    fla_state = None if initial_state is None else initial_state.transpose(-1, -2).float().contiguous()
    outputs, final_state = [], None
    for q in queries:
        y, final_state = chunk_rwkv7(
            r=q, w=w, k=k, v=v, a=a, b=b, scale=1.0,
            initial_state=fla_state, output_final_state=output_final_state, **settings,
        )
        outputs.append(y)
    if output_final_state:
        final_state = final_state.transpose(-1, -2)
    return tuple(outputs), (final_state if output_final_state else None)
