"""Initialisation against RWKV-LM's formulas (RWKV-v7/train_temp: __init__ + generate_init_weight)
and the transformer's normal init. Values at specific channels are computed by hand from the
published formulas, so a wrong exponent or offset fails."""

import math

import pytest
import torch

from model import build_model, model_preset
from model.config import lora_rank

L, C, N = 4, 128, 32


@pytest.fixture(scope="module")
def rwkv7():
    torch.manual_seed(0)
    return build_model(model_preset("rwkv7-tiny", n_layer=L, d_model=C, head_size=N,
                                    vocab_size=512, lora_decay=0, lora_a=0, lora_value=0,
                                    lora_gate=0)).requires_grad_(False)


def is_orthogonal_with_gain(weight: torch.Tensor, gain: float) -> bool:
    w = weight.double() / gain
    small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.allclose(small, torch.eye(small.shape[0], dtype=torch.float64), atol=1e-5)


def test_token_shift_mixes_follow_the_layer_ratio(rwkv7):
    for layer_id in (0, 2):
        att, ffn = rwkv7.blocks[layer_id].att, rwkv7.blocks[layer_id].ffn
        ratio = 1 - layer_id / L
        i = 37
        assert att.x_r[0] == 1.0 and ffn.x_k[0] == 1.0          # channel 0: all previous token
        assert math.isclose(att.x_r[i], 1 - (i / C) ** (0.2 * ratio), rel_tol=1e-6)
        assert math.isclose(att.x_w[i], 1 - (i / C) ** (0.9 * ratio), rel_tol=1e-6)
        assert math.isclose(att.x_k[i], 1 - (i / C) ** (0.7 * ratio), rel_tol=1e-6)
        assert math.isclose(att.x_g[i], 1 - (i / C) ** (0.2 * ratio), rel_tol=1e-6)
        assert math.isclose(ffn.x_k[i], 1 - (i / C) ** (ratio ** 4), rel_tol=1e-6)


def test_decay_and_rate_vectors(rwkv7):
    att = rwkv7.blocks[2].att
    ratio_0_to_1 = 2 / (L - 1)
    for n in (0, 5, C - 1):
        zigzag = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
        zigzag *= abs(zigzag)
        linear = n / (C - 1) - 0.5
        w0 = -6 + 6 * (n / (C - 1)) ** (1 + ratio_0_to_1 ** 0.3) + 0.5 + zigzag * 2.5
        assert math.isclose(att.w0[n], w0, rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(att.a0[n], -0.19 + zigzag * 0.3 + linear * 0.4, abs_tol=1e-6)
        assert math.isclose(att.v0[n], 0.73 - linear * 0.4, abs_tol=1e-6)
        assert math.isclose(att.k_k[n], 0.71 - linear * 0.1, abs_tol=1e-6)
    assert torch.all(att.k_a == 1.02) and torch.all(att.r_k == -0.04)
    assert not hasattr(rwkv7.blocks[0].att, "v0"), "layer 0 has no value residual"


def test_lora_ranks_and_factors(rwkv7):
    cfg = rwkv7.cfg
    assert lora_rank(model_preset("rwkv7-150m"), "decay") == 64    # round(2.5*sqrt(768)/32)*32
    assert lora_rank(model_preset("rwkv7-150m"), "gate") == 128
    assert lora_rank(model_preset("rwkv7-1.5b"), "value") == 64    # max(32, 1.7*45.25 -> 64)
    att = rwkv7.blocks[1].att
    assert att.w1.shape == (C, lora_rank(cfg, "decay")) and att.g1.shape == (C, lora_rank(cfg, "gate"))
    for first, second in ((att.w1, att.w2), (att.a1, att.a2), (att.v1, att.v2), (att.g1, att.g2)):
        assert torch.count_nonzero(first) == 0
        rank = second.shape[0]
        gain = 0.1 * (math.sqrt(rank / C) if rank > C else 1.0)
        assert is_orthogonal_with_gain(second, gain)


def test_projection_matrices_and_norms(rwkv7):
    for layer_id, block in enumerate(rwkv7.blocks):
        att = block.att
        assert is_orthogonal_with_gain(att.receptance.weight, 1.0)
        assert is_orthogonal_with_gain(att.value.weight, 1.0)
        assert is_orthogonal_with_gain(att.key.weight, 0.1)
        assert torch.count_nonzero(att.output.weight) == 0
        assert torch.count_nonzero(block.ffn.value.weight) == 0
        assert is_orthogonal_with_gain(block.ffn.key.weight, 1.0)
        assert block.ffn.key.weight.shape == (4 * C, C)
        expected = ((layer_id + 1) / L) ** 0.7
        assert torch.allclose(att.ln_x.weight, torch.full((C,), expected))
        assert att.ln_x.eps == 64e-5
    assert hasattr(rwkv7.blocks[0], "ln0") and not hasattr(rwkv7.blocks[1], "ln0")


def test_embedding_and_head(rwkv7):
    emb = rwkv7.emb.weight
    assert emb.abs().max() <= 1e-4 and emb.std() > 5e-5      # U(-1e-4, 1e-4): std 5.8e-5
    assert is_orthogonal_with_gain(rwkv7.head.weight, 0.5 * math.sqrt(512 / C))


def test_a_fresh_rwkv_model_predicts_nearly_uniform_logits_from_the_head_alone(rwkv7):
    # Zero W_o and zero FFN value: every block is the identity on the residual at init, so the
    # logits depend on the token only through ln0(emb) -> ln_out -> head.
    tokens = torch.tensor([[3, 9, 3]])
    logits, _ = rwkv7(tokens)
    assert torch.allclose(logits[0, 0], logits[0, 2], atol=1e-5)


def test_metastate_layer_init_is_the_identity_on_the_residual():
    torch.manual_seed(0)
    model = build_model(model_preset("metastate-tiny-wide"))
    for block in model.blocks:
        assert torch.count_nonzero(block.meta.output.weight) == 0
        assert is_orthogonal_with_gain(block.meta.input.weight, 1.0)
    # layer 1 of 2: ChannelMix's curve 1 - (i/C)^((1 - 1/2)^4)
    expected = 1 - (torch.arange(64, dtype=torch.float64) / 64) ** (0.5 ** 4)
    assert torch.allclose(model.blocks[1].meta.x_m.detach(), expected.float())


def test_transformer_init_statistics():
    torch.manual_seed(0)
    cfg = model_preset("transformer-tiny", d_model=256, head_size=32, n_layer=8)
    model = build_model(cfg)
    block = model.blocks[3]
    assert abs(block.attn.wq.weight.std().item() - 0.02) < 0.002
    assert abs(block.mlp.w2.weight.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert block.mlp.w1.weight.shape == (704, 256)      # 8 * 256 / 3 = 682.7 -> 704
    assert torch.all(block.attn_norm.weight == 1)
