"""WKV-7 for a single token (T = 1, generation's decode step): the recurrence applied once.

The chunked backend's WY machinery (chunk decays, a unit-lower inverse, a state scan, padding a
1-token sequence to a whole chunk) is pure overhead for one token: here the update is a few
broadcast products and row sums, in fp32 (float64 for float64 inputs) with autocast off, like
the chunked backend. A decode step costs its weight reads plus one dispatch per op, so this file
avoids ops that do nothing (same-dtype casts, matmul's reshapes for N-by-1 products).
Plain autograd ops, so gradients flow as well.
"""

import contextlib

import torch


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def _autocast_off(device_type: str):
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class OneStepScan:
    """S_1 = S_0 (diag(exp(w)) + a b^T) + v k^T for inputs [B, 1, H, N]; `read(q)` = S_1 q."""

    def __init__(self, w, a, b, k, v, initial_state):
        self.out_dtype = w.dtype
        self.dtype = dtype = torch.promote_types(w.dtype, torch.float32)
        with _autocast_off(w.device.type):
            w, a, b, k, v = (_cast(x[:, 0], dtype) for x in (w, a, b, k, v))   # [B, H, N]
            state = v.unsqueeze(-1) * k.unsqueeze(-2)                        # v k^T
            if initial_state is not None:
                previous = _cast(initial_state, dtype)
                removed = (previous * a.unsqueeze(-2)).sum(-1, keepdim=True) * b.unsqueeze(-2)
                state = torch.addcmul(state + removed, previous, torch.exp(w).unsqueeze(-2))
        self.final_state = state                                      # [B, H, N_v, N_k]

    def read(self, q: torch.Tensor) -> torch.Tensor:
        """y = S_1 q for q [B, 1, H, N]."""
        with _autocast_off(q.device.type):
            y = (self.final_state * _cast(q[:, 0], self.dtype).unsqueeze(-2)).sum(-1)
        return _cast(y.unsqueeze(1), self.out_dtype)
