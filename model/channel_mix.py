"""RWKV-7 ChannelMix (the rwkv7 family's FFN): token shift, ReLU^2, RWKV-LM's init."""

import torch
from torch import nn

from model.config import ModelConfig, ffn_width
from model.init import layer_ratios, orthogonal_, token_shift_mix
from model.one_token import channel_mix_one_token, scripted
from model.sharding import local
from model.time_mix import token_shift


class ChannelMix(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id, self.n_layer = layer_id, cfg.n_layer
        C, F = cfg.d_model, ffn_width(cfg)
        self.x_k = nn.Parameter(torch.empty(C))
        self.key = nn.Linear(C, F, bias=False)
        self.value = nn.Linear(F, C, bias=False)
        self.scripted_step = False   # LanguageModel.prepare_for_decode(script=True) sets it

    @torch.no_grad()
    def init_weights(self) -> None:
        """mu_k = 1 - (i/C)^((1 - l/L)^4); key orthogonal (gain 1); value zero."""
        _, ratio_1_to_almost0 = layer_ratios(self.layer_id, self.n_layer)
        self.x_k.copy_(token_shift_mix(self.x_k.numel(), ratio_1_to_almost0 ** 4))
        orthogonal_(self.key.weight, 1.0)
        self.value.weight.zero_()

    def step(self, x, shift_state):
        """One token: x [B, C], shift state [B, C] or None. Returns (out [B, C], x), as `forward`
        at T = 1."""
        previous = torch.zeros_like(x) if shift_state is None else shift_state.to(x.dtype)
        script = self.scripted_step and not torch.is_autocast_enabled(x.device.type)
        run = scripted(channel_mix_one_token) if script else channel_mix_one_token
        return run(x, previous, self.x_k, self.key.weight, self.value.weight), x

    def forward(self, x, shift_state=None):
        """x: [B, T, C] (ln2-normalised). Returns (out [B, T, C], new shift state [B, C])."""
        k = x + (token_shift(x, shift_state) - x) * local(self.x_k)
        return self.value(torch.relu(self.key(k)) ** 2), x[:, -1]
