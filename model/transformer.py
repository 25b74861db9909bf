"""The transformer baseline block: pre-RMSNorm, RoPE, causal SDPA with a KV cache, SwiGLU.

Init follows the common GPT/Llama recipe: normal(0, 0.02) weights, output projections scaled by
1/sqrt(2 L) so the residual stream's variance does not grow with depth.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig, ffn_width

RMS_EPS = 1e-6
INIT_STD = 0.02


def rope_tables(positions: torch.Tensor, head_size: int, theta: float, dtype: torch.dtype):
    """cos and sin tables [T, head_size / 2] for the given absolute positions."""
    inv_freq = theta ** (-torch.arange(0, head_size, 2, device=positions.device,
                                       dtype=torch.float64) / head_size)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + N/2) of x [B, H, T, N] (the GPT-NeoX/Llama-HF layout)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C = cfg.d_model
        self.head_size, self.n_head, self.theta = cfg.head_size, C // cfg.head_size, cfg.rope_theta
        self.wq = nn.Linear(C, C, bias=False)
        self.wk = nn.Linear(C, C, bias=False)
        self.wv = nn.Linear(C, C, bias=False)
        self.wo = nn.Linear(C, C, bias=False)

    def forward(self, x, cache: dict | None, position: int):
        """x [B, T, C]; cache {"k", "v"}: [B, H, T_past, N]. Returns (out, new cache)."""
        B, T, _ = x.shape
        N = self.head_size  # heads from sizes: tensor parallelism leaves each rank a share
        q, k, v = (proj(x).view(B, T, -1, N).transpose(1, 2) for proj in (self.wq, self.wk, self.wv))
        positions = torch.arange(position, position + T, device=x.device)
        cos, sin = rope_tables(positions, N, self.theta, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k = torch.cat([cache["k"], k], dim=2)
            v = torch.cat([cache["v"], v], dim=2)
        past = k.shape[2] - T
        if T == 1:   # a decode step sees every key: no mask to build
            y = F.scaled_dot_product_attention(q, k, v)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # Query i sits at absolute position past + i and may see keys 0 .. past + i.
            keys = torch.arange(past + T, device=x.device)
            allowed = keys[None, :] <= (past + torch.arange(T, device=x.device))[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1)), {"k": k, "v": v}


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C, F_ = cfg.d_model, ffn_width(cfg)
        self.w1 = nn.Linear(C, F_, bias=False)     # gate
        self.w3 = nn.Linear(C, F_, bias=False)     # up
        self.w2 = nn.Linear(F_, C, bias=False)     # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id, self.n_layer = layer_id, cfg.n_layer
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=RMS_EPS)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=RMS_EPS)
        self.mlp = SwiGLU(cfg)

    @torch.no_grad()
    def init_weights(self) -> None:
        residual_std = INIT_STD / math.sqrt(2 * self.n_layer)
        for linear in (self.attn.wq, self.attn.wk, self.attn.wv, self.mlp.w1, self.mlp.w3):
            nn.init.normal_(linear.weight, std=INIT_STD)
        for linear in (self.attn.wo, self.mlp.w2):
            nn.init.normal_(linear.weight, std=residual_std)
        self.attn_norm.weight.fill_(1.0)
        self.mlp_norm.weight.fill_(1.0)

    def forward(self, x, v_first, state: dict | None, position: int):
        """Same signature as the RWKV blocks; v_first passes through unused."""
        attn_out, new_cache = self.attn(self.attn_norm(x), state, position)
        x = x + attn_out
        x = x + self.mlp(self.mlp_norm(x))
        return x, v_first, new_cache
