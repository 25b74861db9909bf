"""Progressive expansion is function-preserving: the grown model's logits and old heads' states
equal the parent's, whatever the new entries hold (except the zero W_o/W_oms columns)."""

import pytest
import torch

from model import build_model, model_preset
from model.expand import ExpansionError, check_expansion, expand_model, expand_state_dict, leading_block

from .conftest import CHUNKED, REFERENCE

LOGITS_ATOL = 1e-5   # the bound for fp32 on tiny presets


def state_heads(model) -> int:
    return (model.cfg.d_state or model.cfg.d_model) // model.cfg.head_size


def assert_same_function(parent, grown, tokens):
    with torch.no_grad():
        parent_logits, parent_state = parent(tokens)
        grown_logits, grown_state = grown(tokens)
    assert (parent_logits - grown_logits).abs().max() <= LOGITS_ATOL
    H = state_heads(parent)
    for old, new in zip(parent_state.layers, grown_state.layers):  # the parent's layers
        for key in ("att_shift", "ffn_shift"):
            assert torch.allclose(old[key], new[key], atol=1e-6), key
        for key in ("wkv", "meta"):
            if key in old:
                assert torch.allclose(old[key], new[key][:, :H], atol=1e-6), key
                assert new[key][:, H:].abs().max() > 0, f"new heads' {key} state never moved"
    assert len(grown_state.layers) == grown.cfg.n_layer


@torch.no_grad()
def perturb_new_entries(grown, old_shapes, scale=0.3):
    """Noise on every new entry except the output projections (W_o, W_oms, FFN value), which
    expansion must leave zero: preservation must not rest on the fresh init's values."""
    generator = torch.Generator().manual_seed(7)
    for name, param in grown.named_parameters():
        if name.endswith(("output.weight", "ffn.value.weight")):
            continue
        noise = torch.randn(param.shape, generator=generator) * scale
        if name in old_shapes:
            noise[leading_block(old_shapes[name])] = 0
        param.add_(noise)


@pytest.mark.parametrize("ops_cfg", [CHUNKED, REFERENCE], ids=["chunked", "reference"])
def test_metastate_heads_and_layers_grow_with_identical_logits_and_states(ops_cfg, make_tiny,
                                                                          make_tokens):
    parent = make_tiny("metastate-tiny", ops_cfg)           # C_s = C = 64: no W_in yet
    target = model_preset("metastate-tiny-wide", n_layer=4)   # C_s = 128 > C: W_in appears
    weights, old_shapes = expand_state_dict(parent.state_dict(), parent.cfg, target, seed=3)
    grown = build_model(target, ops_cfg)
    grown.load_state_dict(weights)
    perturb_new_entries(grown, old_shapes)
    assert_same_function(parent, grown, make_tokens(parent, batch=2, length=37))

    C, C_s = 64, 128
    for layer in range(2):
        w_in = weights[f"blocks.{layer}.meta.input.weight"]
        assert torch.equal(w_in[:C], torch.eye(C)) and w_in[C:].abs().sum() > 0
        for out in ("att.output.weight", "meta.output.weight"):
            assert torch.equal(weights[f"blocks.{layer}.{out}"][:, C:], torch.zeros(C, C_s - C))
    for layer in (2, 3):                       # appended after the old ones, never before
        assert f"blocks.{layer}.att.output.weight" not in old_shapes
        assert not weights[f"blocks.{layer}.att.output.weight"].any()
        assert not weights[f"blocks.{layer}.meta.output.weight"].any()
    for name, tensor in parent.state_dict().items():
        assert torch.equal(weights[name][leading_block(tensor.shape)], tensor), name


def test_heads_grow_again_when_w_in_exists_and_rwkv7_grows_too(make_tiny, make_tokens):
    parent = make_tiny("metastate-tiny-wide")               # already has W_in (128 x 64)
    grown = expand_model(parent, model_preset("metastate-tiny-wide", d_state=192, n_layer=3))
    assert_same_function(parent, grown, make_tokens(parent, batch=2, length=20))
    rwkv = make_tiny("rwkv7-tiny")
    grown = expand_model(rwkv, model_preset("rwkv7-tiny", d_state=96, n_layer=3))
    assert_same_function(rwkv, grown, make_tokens(rwkv, batch=2, length=20))


def test_seed_controls_only_the_new_entries(make_tiny):
    parent = make_tiny("metastate-tiny")
    target = model_preset("metastate-tiny-wide")
    a, old = expand_state_dict(parent.state_dict(), parent.cfg, target, seed=1)
    b, _ = expand_state_dict(parent.state_dict(), parent.cfg, target, seed=1)
    c, _ = expand_state_dict(parent.state_dict(), parent.cfg, target, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    name = "blocks.1.att.receptance.weight"
    assert torch.equal(a[name][leading_block(old[name])], c[name][leading_block(old[name])])
    assert not torch.equal(a[name], c[name])


def test_incompatible_targets_list_every_field():
    parent = model_preset("metastate-tiny-wide", n_layer=3)
    bad = model_preset("metastate-tiny", n_layer=2, d_model=128, d_state=64, vocab_size=512,
                       head_size=32)
    with pytest.raises(ExpansionError) as err:
        check_expansion(parent, bad)
    message = str(err.value)
    for phrase in ("model.d_model 64 -> 128", "model.vocab_size 256 -> 512", "model.head_size 16 -> 32",
                   "model.n_layer 3 -> 2 (shrinks)", "C_s (model.d_state) 128 -> 64 (shrinks)"):
        assert phrase in message
    with pytest.raises(ExpansionError, match="model.family 'metastate' -> 'rwkv7'"):
        check_expansion(parent, model_preset("rwkv7-tiny", n_layer=4, d_state=128))
    with pytest.raises(ExpansionError, match="only metastate and rwkv7"):
        check_expansion(model_preset("transformer-tiny"), model_preset("transformer-tiny", n_layer=3))
    with pytest.raises(ExpansionError, match="out_norm='full'"):
        check_expansion(model_preset("metastate-tiny", out_norm="full"),
                        model_preset("metastate-tiny-wide", out_norm="full"))
    with pytest.raises(ExpansionError, match="nothing to grow"):
        check_expansion(parent, parent)


@pytest.mark.slow
def test_metastate_150m_grows_into_450m_on_a_short_sequence():
    torch.set_num_threads(2)  # building the 450m target's official init dominates
    torch.manual_seed(0)
    parent = build_model(model_preset("metastate-150m"), CHUNKED, device="meta")
    parent.to_empty(device="cpu")
    with torch.no_grad():   # stand-in trained weights (no zero W_o/W_oms), without the init's cost
        for param in parent.parameters():
            param.normal_(0, 0.02)
        for block in parent.blocks:
            for norm in (block.ln1, block.ln2, block.att.ln_x, block.meta.ln_out):
                norm.weight.fill_(1.0)
    grown = expand_model(parent, model_preset("metastate-450m"), seed=0)
    assert grown.cfg.n_layer == 24 and state_heads(grown) == 48
    tokens = torch.randint(0, 50304, (1, 8), generator=torch.Generator().manual_seed(0))
    assert_same_function(parent, grown, tokens)
