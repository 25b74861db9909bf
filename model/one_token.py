"""The rwkv7 family's one-token forms (generation's decode step) as plain tensor functions.

`TimeMix.step` and `ChannelMix.step` call these; `LanguageModel.prepare_for_decode(script=True)`
swaps in their TorchScript compilations (`scripted`), which run the same ops without the Python
interpreter between them. At batch 1 a decode step is its weight reads plus ~80 small ops per
layer; one TimeMix step at width 128 (where the weights cost little) took 245 us eager and
175 us scripted on the 2-core CPU of benchmarks/RESULTS.md, "Run 3". The code below is
therefore written in the subset TorchScript compiles: typed signatures, no generator
expressions, no context managers. `time_mix_one_token` runs the WKV update without turning
autocast off, so `TimeMix.step` calls it only while autocast is off (under autocast it takes
the `Wkv7Transition` path, which computes the update in fp32), and the scripted forms run only
with autocast off. Shapes: x [B, C]; head vectors [B, H, N]; WKV state [B, H, N, N].
"""

from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ops.rwkv7.step import rwkv7_one_token

DECAY_SCALE = 0.6065306597        # e^{-1/2}: log-decay = -e^{-1/2} sigmoid(.), decay in (0.545, 1)


def time_mix_scan_inputs(x: Tensor, previous: Tensor, v_first: Tensor | None, mixes: list[Tensor],
                         receptance: Tensor, key: Tensor, value: Tensor,
                         w0: Tensor, w1: Tensor, w2: Tensor, a0: Tensor, a1: Tensor, a2: Tensor,
                         v0: Tensor | None, v1: Tensor | None, v2: Tensor | None,
                         g1: Tensor, g2: Tensor, k_k: Tensor, k_a: Tensor, head_size: int,
                         decay_scale: float = DECAY_SCALE,   # TorchScript reads no float globals
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """TimeMix up to the WKV scan for one token: (r, w, k, v, a, kk as [B, H, N], g [B, C_s],
    v_first [B, C_s]). w is the log-decay; layer 0 passes v0 = v1 = v2 = None (v is v_first)."""
    B, N = x.shape[0], head_size
    shifted = torch.addcmul(x, previous - x, torch.stack(mixes)[:, None])
    xr, xw, xk, xv, xa, xg = shifted[0], shifted[1], shifted[2], shifted[3], shifted[4], shifted[5]
    r = F.linear(xr, receptance)
    k = F.linear(xk, key)
    v = F.linear(xv, value)
    w = torch.sigmoid(torch.addmm(w0, torch.tanh(xw @ w1), w2)).mul_(-decay_scale)
    if v0 is None or v1 is None or v2 is None or v_first is None:
        v_first = v
    else:
        v = torch.lerp(v, v_first, torch.sigmoid(torch.addmm(v0, xv @ v1, v2)))
    a = torch.sigmoid(torch.addmm(a0, xa @ a1, a2))
    g = torch.sigmoid(xg @ g1) @ g2
    H = r.shape[-1] // N
    kk = (k * k_k).view(B, H, N)
    kk = kk / torch.linalg.vector_norm(kk, dim=-1, keepdim=True).clamp_min_(1e-12)  # F.normalize
    k = k * torch.addcmul(1 - k_a, a, k_a)                    # k (1 + (a - 1) k_a)
    return (r.view(B, H, N), w.view(B, H, N), k.view(B, H, N), v.view(B, H, N), a.view(B, H, N),
            kk, g, v_first)


def time_mix_read_out(y: Tensor, r: Tensor, k: Tensor, v: Tensor, g: Tensor, r_k: Tensor,
                      ln_weight: Tensor, ln_bias: Tensor, ln_eps: float, output: Tensor,
                      out_dtype: torch.dtype) -> Tensor:
    """TimeMix after the scan: ln_x per head, the r k bonus, the gate and the output matrix.
    y, r, k, v [B, H, N] in one dtype; returns [B, C] in `out_dtype`."""
    B, H, N = y.shape
    y = F.group_norm(y.reshape(B, H * N), H, ln_weight, ln_bias, ln_eps)
    bonus = (r * k * r_k).sum(dim=-1, keepdim=True)
    gated = torch.addcmul(y.view(B, H, N), bonus, v).view(B, H * N) * g
    return F.linear(gated.to(out_dtype), output)


def time_mix_one_token(x: Tensor, previous: Tensor, v_first: Tensor | None,
                       wkv_state: Tensor | None, mixes: list[Tensor], receptance: Tensor,
                       key: Tensor, value: Tensor, output: Tensor,
                       w0: Tensor, w1: Tensor, w2: Tensor, a0: Tensor, a1: Tensor, a2: Tensor,
                       v0: Tensor | None, v1: Tensor | None, v2: Tensor | None,
                       g1: Tensor, g2: Tensor, k_k: Tensor, k_a: Tensor, r_k: Tensor,
                       ln_weight: Tensor, ln_bias: Tensor, ln_eps: float, head_size: int
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """The whole TimeMix for one token on RWKV-7's own transition (no Meta-State layer reads the
    scan): (out [B, C], v_first, new WKV state)."""
    r, w, k, v, a, kk, g, v_first = time_mix_scan_inputs(
        x, previous, v_first, mixes, receptance, key, value, w0, w1, w2, a0, a1, a2, v0, v1, v2,
        g1, g2, k_k, k_a, head_size)
    y, new_state = rwkv7_one_token(r, w, k, v, kk, kk * a, wkv_state)
    dtype = y.dtype
    out = time_mix_read_out(y, r.to(dtype), k.to(dtype), v.to(dtype), g, r_k, ln_weight, ln_bias,
                            ln_eps, output, x.dtype)
    return out, v_first, new_state


def channel_mix_one_token(x: Tensor, previous: Tensor, x_k: Tensor, key: Tensor,
                          value: Tensor) -> Tensor:
    """ChannelMix for one token: value relu(key lerp(x, previous, x_k))^2."""
    hidden = torch.relu_(F.linear(torch.lerp(x, previous, x_k), key))
    return F.linear(hidden.square_(), value)


@cache
def scripted(function):
    """The TorchScript compilation of one of this file's functions (compiled once per process)."""
    return torch.jit.script(function)
