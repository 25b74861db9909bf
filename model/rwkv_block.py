"""One block of the recurrent families: ln0 (layer 0) -> TimeMix -> ChannelMix or Meta-State."""

import torch
import torch.nn.functional as F
from torch import nn

from model.channel_mix import ChannelMix
from model.config import ModelConfig
from model.meta_state import MetaStateLayer
from model.time_mix import TimeMix
from ops import OpsConfig

LN_EPS = 1e-5


class RWKVBlock(nn.Module):
    """`family == "rwkv7"`: TimeMix + ChannelMix (submodule `ffn`); `"metastate"`: TimeMix +
    MetaStateLayer (submodule `meta`). Names follow RWKV-LM's checkpoint keys."""

    def __init__(self, cfg: ModelConfig, layer_id: int, ops_cfg: OpsConfig):
        super().__init__()
        self.layer_id = layer_id
        C = cfg.d_model
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C, eps=LN_EPS)
        self.ln1 = nn.LayerNorm(C, eps=LN_EPS)
        self.ln2 = nn.LayerNorm(C, eps=LN_EPS)
        self.att = TimeMix(cfg, layer_id, ops_cfg)
        if cfg.family == "rwkv7":
            self.ffn = ChannelMix(cfg, layer_id)
        else:
            self.meta = MetaStateLayer(cfg, layer_id, ops_cfg)

    @torch.no_grad()
    def init_weights(self) -> None:
        for norm in (getattr(self, "ln0", None), self.ln1, self.ln2):
            if norm is not None:
                norm.reset_parameters()
        self.att.init_weights()
        (self.ffn if hasattr(self, "ffn") else self.meta).init_weights()

    def forward(self, x, v_first, state: dict | None, position: int):
        """x [B, T, C]; state: this layer's {"att_shift", "wkv", "ffn_shift"[, "meta"]} or None.

        Returns (x, v_first, new state). `position` is unused (the state carries the past)."""
        state = state or {}
        if self.layer_id == 0:
            x = self.ln0(x)
        att_out, v_first, att_shift, wkv, timemix_scan = self.att(
            self.ln1(x), v_first, state.get("att_shift"), state.get("wkv"))
        x = x + att_out
        if hasattr(self, "ffn"):
            ffn_out, ffn_shift = self.ffn(self.ln2(x), state.get("ffn_shift"))
            new_state = {"att_shift": att_shift, "wkv": wkv, "ffn_shift": ffn_shift}
        else:
            ffn_out, ffn_shift, meta = self.meta(self.ln2(x), timemix_scan,
                                                 state.get("ffn_shift"), state.get("meta"))
            new_state = {"att_shift": att_shift, "wkv": wkv, "ffn_shift": ffn_shift,
                         "meta": meta}
        return x + ffn_out, v_first, new_state

    def step(self, x, v_first, state: dict | None):
        """One token: x [B, C]. Returns (x, v_first, new state), as `forward` at T = 1.

        The norms are called as functions (a module call costs more than a [B, C] layer norm)."""
        state = state or {}
        if self.layer_id == 0:
            x = _layer_norm(self.ln0, x)
        att_out, v_first, att_shift, wkv, timemix_scan = self.att.step(
            _layer_norm(self.ln1, x), v_first, state.get("att_shift"), state.get("wkv"),
            with_scan=not hasattr(self, "ffn"))
        x = x + att_out
        new_state = {"att_shift": att_shift, "wkv": wkv}
        if hasattr(self, "ffn"):
            ffn_out, new_state["ffn_shift"] = self.ffn.step(_layer_norm(self.ln2, x),
                                                            state.get("ffn_shift"))
        else:   # the Meta-State layer's own forward handles T = 1 on the one-token scan
            ffn_out, new_state["ffn_shift"], new_state["meta"] = self.meta(
                self.ln2(x)[:, None], timemix_scan, state.get("ffn_shift"), state.get("meta"))
            ffn_out = ffn_out[:, 0]
        return x + ffn_out, v_first, new_state


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
