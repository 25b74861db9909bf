"""RWKV-7 TimeMix, as RWKV-LM's `RWKV-v7/train_temp` computes and initialises it (DESIGN.md 1).

The state width C_s = H_s * N may differ from the residual width C: r/k/v map C -> C_s, the
output maps C_s -> C, and every per-state-channel vector (w0, a0, v0, k_k, k_a, r_k, ln_x) has
C_s entries. The token-shift mixes act on the input and have C entries.
"""

from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig, lora_rank, state_width
from model.init import (
    decay_bias,
    layer_ratios,
    linear_and_zigzag,
    lora_out_init_,
    orthogonal_,
    token_shift_mix,
)
from model.one_token import (
    DECAY_SCALE,
    scripted,
    time_mix_one_token,
    time_mix_read_out,
    time_mix_scan_inputs,
)
from model.sharding import group_norm_heads, local, matmul_columns
from ops import OpsConfig, Wkv7Transition

LN_X_EPS = 64e-5                  # RWKV-LM's GroupNorm eps for the WKV read-out (not 1e-5)
MIX_NAMES = ("r", "w", "k", "v", "a", "g")
MIX_POWERS = {"r": 0.2, "w": 0.9, "k": 0.7, "v": 0.7, "a": 0.9, "g": 0.2}


def token_shift(x: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """x_{t-1} for every t: the carried last token (or zeros) at t = 0. x is [B, T, C]."""
    first = x.new_zeros(x.shape[0], 1, x.shape[2]) if previous is None else previous[:, None]
    return torch.cat([first.to(x.dtype), x[:, :-1]], dim=1)


def common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The promoted dtype of the scan inputs (under autocast, projections and biases differ)."""
    return reduce(torch.promote_types, (t.dtype for t in tensors))


class TimeMix(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, ops_cfg: OpsConfig):
        super().__init__()
        self.layer_id, self.n_layer = layer_id, cfg.n_layer
        self.ops_cfg = ops_cfg
        C, C_s, N = cfg.d_model, state_width(cfg), cfg.head_size
        self.head_size, self.n_head = N, C_s // N
        for name in MIX_NAMES:
            self.register_parameter(f"x_{name}", nn.Parameter(torch.empty(C)))
        d_w, d_a, d_v, d_g = (lora_rank(cfg, n) for n in ("decay", "a", "value", "gate"))
        self.w0, self.w1, self.w2 = (nn.Parameter(torch.empty(*s)) for s in
                                     ((C_s,), (C, d_w), (d_w, C_s)))
        self.a0, self.a1, self.a2 = (nn.Parameter(torch.empty(*s)) for s in
                                     ((C_s,), (C, d_a), (d_a, C_s)))
        if layer_id > 0:   # layer 0's v is v_first itself: no value-residual gate there
            self.v0, self.v1, self.v2 = (nn.Parameter(torch.empty(*s)) for s in
                                         ((C_s,), (C, d_v), (d_v, C_s)))
        self.g1 = nn.Parameter(torch.empty(C, d_g))
        self.g2 = nn.Parameter(torch.empty(d_g, C_s))
        self.k_k = nn.Parameter(torch.empty(C_s))
        self.k_a = nn.Parameter(torch.empty(C_s))
        self.r_k = nn.Parameter(torch.empty(self.n_head, N))
        self.receptance = nn.Linear(C, C_s, bias=False)
        self.key = nn.Linear(C, C_s, bias=False)
        self.value = nn.Linear(C, C_s, bias=False)
        self.output = nn.Linear(C_s, C, bias=False)
        self.ln_x = nn.GroupNorm(self.n_head, C_s, eps=LN_X_EPS)
        self.scripted_step = False   # LanguageModel.prepare_for_decode(script=True) sets it

    @torch.no_grad()
    def init_weights(self) -> None:
        """RWKV-LM's init: shift mixes 1 - (i/C)^(p (1 - l/L)), w0/a0/v0/k_k/k_a/r_k curves,
        zero first LoRA matrices, 0.1-scaled orthogonal second ones, orthogonal r/v (gain 1) and
        k (gain 0.1), zero output, ln_x weight ((l+1)/L)^0.7."""
        C = self.x_r.numel()
        C_s, N, L, lid = self.k_k.numel(), self.head_size, self.n_layer, self.layer_id
        _, ratio_1_to_almost0 = layer_ratios(lid, L)
        for name in MIX_NAMES:
            power = MIX_POWERS[name] * ratio_1_to_almost0
            getattr(self, f"x_{name}").copy_(token_shift_mix(C, power))
        linear, zigzag = linear_and_zigzag(C_s, N)
        self.w0.copy_(decay_bias(C_s, N, lid, L))
        self.a0.copy_((-0.19 + zigzag * 0.3 + linear * 0.4).float())
        self.k_k.copy_((0.71 - linear * 0.1).float())
        self.k_a.fill_(1.02)
        self.r_k.fill_(-0.04)
        lora_pairs = [(self.w1, self.w2), (self.a1, self.a2), (self.g1, self.g2)]
        if lid > 0:
            self.v0.copy_((0.73 - linear * 0.4).float())
            lora_pairs.append((self.v1, self.v2))
        for first, second in lora_pairs:
            first.zero_()
            lora_out_init_(second, 0.1)
        orthogonal_(self.receptance.weight, 1.0)
        orthogonal_(self.key.weight, 0.1)
        orthogonal_(self.value.weight, 1.0)
        self.output.weight.zero_()
        self.ln_x.weight.fill_(((lid + 1) / L) ** 0.7)
        self.ln_x.bias.zero_()

    def step(self, x, v_first, shift_state, wkv_state, with_scan: bool = False):
        """One token (generation's decode step): x [B, C]; the states as `forward` returns them
        (None at the start). Returns (out [B, C], v_first [B, C_s], new shift state, new WKV
        state, the finished one-token Wkv7Scan if `with_scan` (the Meta-State layer reads it)
        else None). `forward` at T = 1 computes the same values with the sequence machinery;
        this form is model/one_token.py's functions on the weights, TorchScript-compiled after
        `LanguageModel.prepare_for_decode(script=True)` (used when autocast is off)."""
        previous = torch.zeros_like(x) if shift_state is None else shift_state.to(x.dtype)
        mixes = [self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g]
        v0, v1, v2 = (getattr(self, name, None) for name in ("v0", "v1", "v2"))
        if not with_scan and not torch.is_autocast_enabled(x.device.type):
            run = scripted(time_mix_one_token) if self.scripted_step else time_mix_one_token
            out, v_first, new_wkv_state = run(
                x, previous, v_first, wkv_state, mixes, self.receptance.weight, self.key.weight,
                self.value.weight, self.output.weight, self.w0, self.w1, self.w2, self.a0, self.a1,
                self.a2, v0, v1, v2, self.g1, self.g2, self.k_k, self.k_a, self.r_k,
                self.ln_x.weight, self.ln_x.bias, self.ln_x.eps, self.head_size)
            return out, v_first, x, new_wkv_state, None
        r, w, k, v, a, kk, g, v_first = time_mix_scan_inputs(
            x, previous, v_first, mixes, self.receptance.weight, self.key.weight,
            self.value.weight, self.w0, self.w1, self.w2, self.a0, self.a1, self.a2, v0, v1, v2,
            self.g1, self.g2, self.k_k, self.k_a, self.head_size)
        dtype = common_dtype(r, w, k, v, a, kk)
        r, w, k, v, a, kk = (t[:, None].to(dtype) for t in (r, w, k, v, a, kk))
        transition = Wkv7Transition(w, -kk, kk * a, self.ops_cfg.backend, self.ops_cfg.chunk_size)
        scan = transition.scan(r, k, v, initial_state=wkv_state, output_final_state=True)
        out = time_mix_read_out(scan.output[:, 0], r[:, 0], k[:, 0], v[:, 0], g, self.r_k,
                                self.ln_x.weight, self.ln_x.bias, self.ln_x.eps,
                                self.output.weight, x.dtype)
        return out, v_first, x, scan.final_state, scan

    def forward(self, x, v_first, shift_state=None, wkv_state=None):
        """x: [B, T, C] (already ln1-normalised). Returns (out [B, T, C], v_first [B, T, C_s],
        new shift state [B, C], new WKV state [B, H, N, N], the finished Wkv7Scan, whose
        transition and states the Meta-State layer reuses).

        Under tensor parallelism C_s and H are this rank's share of the state heads: sizes come
        from the tensors and parameters are read through model/sharding.py."""
        B, T, _ = x.shape
        N = self.head_size
        xx = token_shift(x, shift_state) - x
        xr, xw, xk, xv, xa, xg = (x + xx * local(getattr(self, f"x_{n}")) for n in MIX_NAMES)

        r = self.receptance(xr)
        w = -DECAY_SCALE * torch.sigmoid(
            local(self.w0) + matmul_columns(torch.tanh(xw @ local(self.w1)), self.w2))
        k = self.key(xk)
        v = self.value(xv)
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(
                local(self.v0) + matmul_columns(xv @ local(self.v1), self.v2))
        a = torch.sigmoid(local(self.a0) + matmul_columns(xa @ local(self.a1), self.a2))
        g = matmul_columns(torch.sigmoid(xg @ local(self.g1)), self.g2)

        H = r.shape[-1] // N
        kk = F.normalize((k * local(self.k_k)).view(B, T, H, N), dim=-1, p=2.0)
        k = k * (1 + (a - 1) * local(self.k_a))
        dtype = common_dtype(r, w, k, v, a, kk)
        r, w, k, v, a = (t.reshape(B, T, H, N).to(dtype) for t in (r, w, k, v, a))
        kk = kk.to(dtype)
        transition = Wkv7Transition(w, -kk, kk * a, self.ops_cfg.backend, self.ops_cfg.chunk_size)
        scan = transition.scan(r, k, v, initial_state=wkv_state, output_final_state=True)
        y, new_wkv_state = scan.output, scan.final_state
        y = group_norm_heads(self.ln_x, y)
        bonus = (r * k * local(self.r_k)).sum(dim=-1, keepdim=True) * v
        out = self.output(((y + bonus).reshape(B, T, H * N) * g).to(x.dtype))
        return out, v_first, x[:, -1], new_wkv_state, scan
