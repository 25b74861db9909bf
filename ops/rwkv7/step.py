"""WKV-7 for a single token (T = 1, generation's decode step): the recurrence applied once.

The chunked backend's WY machinery (chunk decays, a unit-lower inverse, a state scan, padding a
1-token sequence to a whole chunk) is pure overhead for one token: here the update is three
broadcast products and one matrix-vector read per query, in fp32 (float64 for float64 inputs)
with autocast off, like the chunked backend. Plain autograd ops, so gradients flow as well.
"""

import torch


class OneStepScan:
    """S_1 = S_0 (diag(exp(w)) + a b^T) + v k^T for inputs [B, 1, H, N]; `read(q)` = S_1 q."""

    def __init__(self, w, a, b, k, v, initial_state):
        self.out_dtype = w.dtype
        self.dtype = torch.promote_types(w.dtype, torch.float32)
        with torch.autocast(w.device.type, enabled=False):
            w, a, b, k, v = (x[:, 0].to(self.dtype) for x in (w, a, b, k, v))   # [B, H, N]
            if initial_state is None:
                state = v[..., :, None] * k[..., None, :]
            else:
                state = initial_state.to(self.dtype)
                removed = (state @ a[..., None]) * b[..., None, :]
                state = state * torch.exp(w)[..., None, :] + removed + v[..., :, None] * k[..., None, :]
        self.final_state = state                                      # [B, H, N_v, N_k]

    def read(self, q: torch.Tensor) -> torch.Tensor:
        """y = S_1 q for q [B, 1, H, N]."""
        with torch.autocast(q.device.type, enabled=False):
            y = self.final_state @ q[:, 0, :, :, None].to(self.dtype)
        return y.squeeze(-1)[:, None].to(self.out_dtype)
