"""WKV-7 for a single token (T = 1, generation's decode step): the recurrence applied once.

The chunked backend's WY machinery (chunk decays, a unit-lower inverse, a state scan, padding a
1-token sequence to a whole chunk) is pure overhead for one token: here the update is three
batched matrix products per head batch, in fp32 (float64 for float64 inputs) with autocast off,
like the chunked backend. A decode step costs its weight reads plus one dispatch per op, so this
file avoids ops that do nothing (same-dtype casts) and folds the rank-1 terms into `baddbmm`
(one op each instead of a broadcast product and a sum). Plain autograd ops, so gradients flow.
"""

import contextlib
from functools import reduce

import torch


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def _autocast_off(device_type: str):
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def scan_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the one-token update runs in: fp32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def one_token_state(state, decay, a, b, k, v, b_sign: float = 1.0) -> torch.Tensor:
    """S_1 = S_0 diag(decay) + b_sign (S_0 a) b^T + v k^T per head.

    Vectors [B, H, N] (decay = exp(w)), S_0 [B, H, N_v, N_k] or None (zeros); all in one dtype,
    autocast off (the caller's job). `b_sign = -1` lets RWKV-7 pass a = kk, b = kk * a without
    negating a vector. Returns S_1 [B, H, N, N].
    """
    B, H, N = k.shape
    outer_v, outer_k = v.reshape(B * H, N, 1), k.reshape(B * H, 1, N)
    if state is None:
        return torch.bmm(outer_v, outer_k).view(B, H, N, N)
    previous = state.reshape(B * H, N, N)
    removed = torch.bmm(previous, a.reshape(B * H, N, 1))                 # S_0 a
    new = torch.baddbmm(previous * decay.reshape(B * H, 1, N), removed, b.reshape(B * H, 1, N),
                        alpha=b_sign)
    return new.baddbmm_(outer_v, outer_k).view(B, H, N, N)


def read_state(state: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """S q per head: state [B, H, N, N], q [B, H, N] (same dtype) -> [B, H, N]."""
    B, H, N = q.shape
    return torch.bmm(state.reshape(B * H, N, N), q.reshape(B * H, N, 1)).view(B, H, N)


class OneStepScan:
    """S_1 = S_0 (diag(exp(w)) + a b^T) + v k^T for inputs [B, 1, H, N]; `read(q)` = S_1 q."""

    def __init__(self, w, a, b, k, v, initial_state):
        self.out_dtype = w.dtype
        self.dtype = dtype = scan_dtype(w.dtype)
        with _autocast_off(w.device.type):
            w, a, b, k, v = (_cast(x[:, 0], dtype) for x in (w, a, b, k, v))   # [B, H, N]
            previous = None if initial_state is None else _cast(initial_state, dtype)
            self.final_state = one_token_state(previous, torch.exp(w), a, b, k, v)

    def read(self, q: torch.Tensor) -> torch.Tensor:
        """y = S_1 q for q [B, 1, H, N]."""
        with _autocast_off(q.device.type):
            y = read_state(self.final_state, _cast(q[:, 0], self.dtype))
        return _cast(y.unsqueeze(1), self.out_dtype)


def rwkv7_one_token(r, w, k, v, kk, kk_a, state):
    """RWKV-7's transition for one token (a = -kk, b = kk * a_gate, as `Wkv7Transition(w, -kk,
    kk * a)`), read by r. Vectors [B, H, N], w the log-decay; state [B, H, N, N] or None.

    Returns (y [B, H, N] in the inputs' promoted dtype, S_1 in the update's dtype): what `Wkv7Transition(...)
    .scan(...)` gives at T = 1, without building the transition object and its input checks (the
    decode step of a model without a Meta-State layer reads nothing else from the scan).
    """
    out_dtype = reduce(torch.promote_types, (x.dtype for x in (r, w, k, v, kk, kk_a)))
    dtype = scan_dtype(out_dtype)
    with _autocast_off(r.device.type):
        r32, w, k, v, kk, kk_a = (_cast(x, dtype) for x in (r, w, k, v, kk, kk_a))
        previous = None if state is None else _cast(state, dtype)
        new_state = one_token_state(previous, torch.exp(w), kk, kk_a, k, v, b_sign=-1.0)
        y = read_state(new_state, r32)
    return _cast(y, out_dtype), new_state
