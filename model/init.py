"""RWKV-LM's initialisation helpers (RWKV-v7/train_temp, `__init__` plus `generate_init_weight`).

The per-channel curves below are RWKV-LM's loops over channels, written as tensor expressions.
"""

import math

import torch
from torch import nn


def layer_ratios(layer_id: int, n_layer: int) -> tuple[float, float]:
    """(ratio_0_to_1, ratio_1_to_almost0) of RWKV-LM; a 1-layer model counts as layer ratio 0."""
    ratio_0_to_1 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0
    return ratio_0_to_1, 1.0 - layer_id / n_layer


def channel_fraction(width: int) -> torch.Tensor:
    """ddd of RWKV-LM: i / width for channel i, the base curve of every token-shift mix."""
    return torch.arange(width, dtype=torch.float64) / width


def token_shift_mix(width: int, power: float) -> torch.Tensor:
    """mu = 1 - ddd ** power: channel 0 takes all of the previous token, the last almost none."""
    return (1.0 - channel_fraction(width) ** power).float()


def linear_and_zigzag(width: int, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RWKV-LM's `linear` (-0.5 .. 0.5 across channels) and `zigzag` (a signed square ramp
    within each head) curves, used by w0, a0, v0 and k_k."""
    n = torch.arange(width, dtype=torch.float64)
    linear = n / max(width - 1, 1) - 0.5
    half = (head_size - 1) / 2 if head_size > 1 else 1.0
    zigzag = ((n % head_size) - half) / half
    zigzag = zigzag * zigzag.abs()
    return linear, zigzag


def decay_bias(width: int, head_size: int, layer_id: int, n_layer: int) -> torch.Tensor:
    """w0 = -6 + 6 (n / (C-1)) ** (1 + ratio_0_to_1 ** 0.3) + 0.5 + 2.5 zigzag."""
    ratio_0_to_1, _ = layer_ratios(layer_id, n_layer)
    n = torch.arange(width, dtype=torch.float64)
    www = -6 + 6 * (n / max(width - 1, 1)) ** (1 + ratio_0_to_1 ** 0.3)
    _, zigzag = linear_and_zigzag(width, head_size)
    return (www + 0.5 + zigzag * 2.5).float()


@torch.no_grad()
def orthogonal_(weight: torch.Tensor, gain: float) -> torch.Tensor:
    """nn.init.orthogonal_ (gain 0 means zeros), computed on CPU in float32 so that every
    device gets the same numbers for the same seed."""
    if gain == 0:
        return weight.zero_()
    values = torch.empty(weight.shape, dtype=torch.float32)
    nn.init.orthogonal_(values, gain=gain)
    return weight.copy_(values)


@torch.no_grad()
def lora_out_init_(weight: torch.Tensor, scale: float = 0.1) -> torch.Tensor:
    """RWKV-LM's ortho_init for a LoRA's second matrix [rank, width]: orthogonal, gain
    scale * sqrt(rows / cols) when it has more rows than columns."""
    rows, cols = weight.shape
    gain = math.sqrt(rows / cols) if rows > cols else 1.0
    return orthogonal_(weight, gain * scale)
