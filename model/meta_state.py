"""The Meta-State layer (DESIGN.md section 2): it replaces the FFN of an RWKV-7 block.

    x'_t = x_t + (x_{t-1} - x_t) * mu_m               (x = ln2 output; token shift)
    u_t  = W_in x'_t  (only when C_s != C)
    z_t  = ReLU(S_t u_t)                              (Self-State Encoder; S_t = this layer's
                                                       post-update WKV state, or a learned N x N
                                                       per head when sse = learned)
    M_t  = M_{t-1} (diag(d_t) - kk_t (a_t kk_t)^T) + z_t z_t^T     (the TimeMix's transition)
    o_t  = W_oms LN_head(M_t z_t)                     (W_oms = 0 at init)

Readings left open by the design (ModelConfig; chosen by benchmarks/science.py): `meta_shift`
(the token shift on x', on by default), `meta_decay=own` (the meta-state decays with a learned
per-channel d = exp(-e^{-1/2} sigmoid(w0_m)) of its own instead of the TimeMix's d_t; kk and a stay
shared) and `meta_out_lr_mult` (W_oms's learning rate, see model/optim_groups.py).

The SSE query u_t depends on the TimeMix output of the same token (through the residual and
ln2), so it is read after the TimeMix scan from that scan's kept states (`Wkv7Scan.read`: no
second scan on the chunked backend), and the meta-state scan reuses the TimeMix's prepared
transition.
"""

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig, state_width
from model.init import decay_bias, layer_ratios, orthogonal_, token_shift_mix
from model.sharding import group_norm_heads, local, local_columns
from model.time_mix import DECAY_SCALE, LN_X_EPS, token_shift
from ops import OpsConfig, Wkv7Scan, meta_state_scan

Z_NORM_EPS = 1e-12


class MetaStateLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, ops_cfg: OpsConfig):
        super().__init__()
        self.layer_id, self.n_layer = layer_id, cfg.n_layer
        self.ops_cfg = ops_cfg
        self.sse, self.z_norm = cfg.sse, cfg.z_norm
        C, C_s, N = cfg.d_model, state_width(cfg), cfg.head_size
        self.head_size, self.n_head = N, C_s // N
        self.x_m = nn.Parameter(torch.empty(C)) if cfg.meta_shift else None
        if cfg.meta_decay == "own":
            self.w0 = nn.Parameter(torch.empty(C_s))
        self.input = nn.Linear(C, C_s, bias=False) if C_s != C else None
        if cfg.sse == "learned":
            self.sse_weight = nn.Parameter(torch.empty(self.n_head, N, N))
        if cfg.out_norm == "head":
            self.ln_out = nn.GroupNorm(self.n_head, C_s, eps=LN_X_EPS)
        else:
            self.ln_out = nn.LayerNorm(C_s, eps=LN_X_EPS)
        self.output = nn.Linear(C_s, C, bias=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """mu_m as ChannelMix's mu_k; W_in and the learned SSE orthogonal (gain 1); LN_head
        weight 1, bias 0; W_oms zero, so a new layer starts as the identity on the residual; an
        own decay bias w0 starts as the TimeMix's w0 curve."""
        _, ratio_1_to_almost0 = layer_ratios(self.layer_id, self.n_layer)
        if self.x_m is not None:
            self.x_m.copy_(token_shift_mix(self.x_m.numel(), ratio_1_to_almost0 ** 4))
        if hasattr(self, "w0"):
            self.w0.copy_(decay_bias(self.w0.numel(), self.head_size, self.layer_id, self.n_layer))
        if self.input is not None:
            orthogonal_(self.input.weight, 1.0)
        if self.sse == "learned":
            for head in self.sse_weight:
                orthogonal_(head, 1.0)
        self.ln_out.weight.fill_(1.0)
        self.ln_out.bias.zero_()
        self.output.weight.zero_()

    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        # Keeps each injection z z^T of bounded size so that M stays bounded for any input.
        if self.z_norm == "l2":
            return F.normalize(z, dim=-1, eps=Z_NORM_EPS)
        if self.z_norm == "rms":
            return z * torch.rsqrt(z.pow(2).mean(dim=-1, keepdim=True) + Z_NORM_EPS)
        return z

    def _meta_scan(self, z, timemix: Wkv7Scan, meta_state):
        shared = timemix.transition
        if not hasattr(self, "w0"):
            return meta_state_scan(z, None, None, None, initial_state=meta_state,
                                   output_final_state=True, transition=shared)
        B, T, H, N = z.shape
        # the same bound as the TimeMix's decay (d in (0.545, 1)), constant over time
        w = (-DECAY_SCALE * torch.sigmoid(local(self.w0))).to(z.dtype).view(1, 1, H, N)
        return meta_state_scan(z, w.expand(B, T, H, N).contiguous(), shared.a, shared.b,
                               initial_state=meta_state, output_final_state=True,
                               backend=shared.backend, chunk_size=shared.chunk_size)

    def forward(self, x, timemix: Wkv7Scan, shift_state=None, meta_state=None):
        """x: [B, T, C] (ln2-normalised); timemix: the same layer's finished TimeMix scan.

        Returns (out [B, T, C], new shift state [B, C], new meta-state [B, H, N, N]). Under
        tensor parallelism H is this rank's share of the heads (see model/sharding.py)."""
        B, T, _ = x.shape
        N = self.head_size
        xm = x if self.x_m is None else x + (token_shift(x, shift_state) - x) * local(self.x_m)
        u = self.input(xm) if self.input is not None else local_columns(xm, like=self.ln_out.weight)
        H = u.shape[-1] // N
        u = u.reshape(B, T, H, N).to(timemix.transition.w.dtype)
        if self.sse == "state":
            z = timemix.read(u)
        else:
            z = torch.einsum("bthj,hij->bthi", u, local(self.sse_weight).to(u.dtype))
        # under autocast the einsum comes back in bf16; the meta-state scan takes the transition's dtype
        z = self._normalise(torch.relu(z.to(u.dtype)))
        o, new_meta_state = self._meta_scan(z, timemix, meta_state)
        if isinstance(self.ln_out, nn.GroupNorm):
            o = group_norm_heads(self.ln_out, o).reshape(B, T, H * N)
        else:  # out_norm=full: statistics over all heads, so tensor parallelism refuses it
            o = self.ln_out(o.reshape(B, T, H * N))
        return self.output(o.to(x.dtype)), x[:, -1], new_meta_state
