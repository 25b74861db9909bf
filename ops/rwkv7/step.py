"""WKV-7 for a single token (T = 1, generation's decode step): the recurrence applied once.

The chunked backend's WY machinery (chunk decays, a unit-lower inverse, a state scan, padding a
1-token sequence to a whole chunk) is pure overhead for one token: here the update is three
batched matrix products per head batch, in fp32 (float64 for float64 inputs) with autocast off,
like the chunked backend. A decode step costs its weight reads plus one dispatch per op, so this
file avoids ops that do nothing (same-dtype casts) and folds the rank-1 terms into `baddbmm`
(one op each instead of a broadcast product and a sum). Plain autograd ops, so gradients flow.
"""

import contextlib

import torch
from torch import Tensor


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def _autocast_off(device_type: str):
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def one_token_state(state: Tensor | None, decay: Tensor, a: Tensor, b: Tensor, k: Tensor,
                    v: Tensor, b_sign: float = 1.0) -> Tensor:
    """S_1 = S_0 diag(decay) + b_sign (S_0 a) b^T + v k^T per head.

    Vectors [B, H, N] (decay = exp(w)), S_0 [B, H, N_v, N_k] or None (zeros); all in one dtype,
    autocast off (the caller's job). `b_sign = -1` lets RWKV-7 pass a = kk, b = kk * a without
    negating a vector. Returns S_1 [B, H, N, N]. TorchScript compiles it (model/one_token.py).
    """
    B, H, N = k.shape
    outer_v, outer_k = v.reshape(B * H, N, 1), k.reshape(B * H, 1, N)
    if state is None:
        return torch.bmm(outer_v, outer_k).view(B, H, N, N)
    previous = state.reshape(B * H, N, N)
    removed = torch.bmm(previous, a.reshape(B * H, N, 1))                 # S_0 a
    new = previous * decay.reshape(B * H, 1, N)        # updated in place: one [N, N] buffer per head
    new.baddbmm_(removed, b.reshape(B * H, 1, N), alpha=b_sign).baddbmm_(outer_v, outer_k)
    return new.view(B, H, N, N)


def read_state(state: Tensor, q: Tensor) -> Tensor:
    """S q per head: state [B, H, N, N], q [B, H, N] (same dtype) -> [B, H, N]."""
    B, H, N = q.shape
    return torch.bmm(state.reshape(B * H, N, N), q.reshape(B * H, N, 1)).view(B, H, N)


def rwkv7_one_token(r: Tensor, w: Tensor, k: Tensor, v: Tensor, kk: Tensor, kk_a: Tensor,
                    state: Tensor | None) -> tuple[Tensor, Tensor]:
    """RWKV-7's transition for one token (a = -kk, b = kk * a_gate, as `Wkv7Transition(w, -kk,
    kk * a)`), read by r. Vectors [B, H, N], w the log-decay; state [B, H, N, N] or None.

    Returns (y [B, H, N] in the inputs' promoted dtype, S_1 in the update's dtype, fp32 or
    float64): what `Wkv7Transition(...).scan(...)` gives at T = 1, without the transition object
    and its input checks (a decode step without a Meta-State layer reads nothing else from the
    scan). Call it with autocast off; TorchScript compiles it (model/one_token.py).
    """
    dtype = r.dtype
    if (dtype in (torch.float32, torch.float64) and w.dtype == dtype and k.dtype == dtype
            and v.dtype == dtype and kk.dtype == dtype and kk_a.dtype == dtype
            and (state is None or state.dtype == dtype)):   # the usual case: no casts to call
        new_state = one_token_state(state, torch.exp(w), kk, kk_a, k, v, b_sign=-1.0)
        return read_state(new_state, r), new_state
    out_dtype = torch.promote_types(torch.promote_types(r.dtype, w.dtype),
                                    torch.promote_types(k.dtype, v.dtype))
    out_dtype = torch.promote_types(out_dtype, torch.promote_types(kk.dtype, kk_a.dtype))
    dtype = torch.promote_types(out_dtype, torch.float32)
    previous = None if state is None else state.to(dtype)
    new_state = one_token_state(previous, torch.exp(w.to(dtype)), kk.to(dtype), kk_a.to(dtype),
                                k.to(dtype), v.to(dtype), b_sign=-1.0)
    return read_state(new_state, r.to(dtype)).to(out_dtype), new_state


class OneStepScan:
    """S_1 = S_0 (diag(exp(w)) + a b^T) + v k^T for inputs [B, 1, H, N]; `read(q)` = S_1 q."""

    def __init__(self, w, a, b, k, v, initial_state):
        self.out_dtype = w.dtype
        self.dtype = dtype = torch.promote_types(w.dtype, torch.float32)
        with _autocast_off(w.device.type):
            w, a, b, k, v = (_cast(x[:, 0], dtype) for x in (w, a, b, k, v))   # [B, H, N]
            previous = None if initial_state is None else _cast(initial_state, dtype)
            self.final_state = one_token_state(previous, torch.exp(w), a, b, k, v)

    def read(self, q: torch.Tensor) -> torch.Tensor:
        """y = S_1 q for q [B, 1, H, N]."""
        with _autocast_off(q.device.type):
            y = read_state(self.final_state, _cast(q[:, 0], self.dtype))
        return _cast(y.unsqueeze(1), self.out_dtype)

