"""The one forward interface: shapes, causality, recurrent == parallel, constant state, errors.

Models are tiny presets with every parameter perturbed (see conftest), so zero-initialised
outputs take part. Parity tolerance: fp32 logits of magnitude ~1-10 agree to ~1e-6 between the
chunked parallel pass and token-by-token steps; 1e-4 absolute is far below any real mismatch
(a state carried wrongly changes logits by O(1)).
"""

import pytest
import torch

from model import ModelState, build_model, model_preset

from .conftest import REFERENCE, TINY

PARITY_ATOL = 1e-4


@pytest.mark.parametrize("name", TINY)
def test_logits_and_state_shapes(name, make_tiny, make_tokens):
    model = make_tiny(name)
    tokens = make_tokens(model, batch=3, length=11)
    logits, state = model(tokens)
    assert logits.shape == (3, 11, model.cfg.vocab_size)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert isinstance(state, ModelState) and len(state.layers) == model.cfg.n_layer
    assert state.seen_tokens == 11
    if model.cfg.family != "transformer":
        N = model.cfg.head_size
        H = (model.cfg.d_state or model.cfg.d_model) // N
        assert state.layers[0]["wkv"].shape == (3, H, N, N)
        assert state.layers[0]["att_shift"].shape == (3, model.cfg.d_model)
        if model.cfg.family == "metastate":
            assert state.layers[1]["meta"].shape == (3, H, N, N)


@pytest.mark.parametrize("name", TINY)
def test_changing_a_token_never_changes_earlier_logits(name, make_tiny, make_tokens):
    # The reference step loop is causal bit for bit; the chunked backend rescales each chunk
    # around its middle token, so a change there moves earlier outputs by fp32 round-off.
    model = make_tiny(name, REFERENCE)
    tokens = make_tokens(model, batch=1, length=24)
    logits, _ = model(tokens)
    for t in (0, 9, 23):
        changed = tokens.clone()
        changed[0, t] = (changed[0, t] + 1) % model.cfg.vocab_size
        new_logits, _ = model(changed)
        assert torch.equal(new_logits[:, :t], logits[:, :t]), f"token {t} leaked backwards"
        assert not torch.allclose(new_logits[:, t], logits[:, t]), f"token {t} had no effect"


@pytest.mark.parametrize("name", TINY)
def test_token_by_token_equals_parallel_pass(name, make_tiny, make_tokens):
    model = make_tiny(name)
    tokens = make_tokens(model, batch=2, length=21)
    parallel, final = model(tokens)
    state, steps = None, []
    for t in range(tokens.shape[1]):
        logits, state = model(tokens[:, t : t + 1], state)
        steps.append(logits)
    assert (torch.cat(steps, dim=1) - parallel).abs().max() < PARITY_ATOL
    for carried, full in zip(state.layers, final.layers):
        for key in full:
            assert torch.allclose(carried[key], full[key], atol=PARITY_ATOL), key


@pytest.mark.parametrize("name", TINY)
def test_windows_with_carried_state_equal_one_pass(name, make_tiny, make_tokens):
    model = make_tiny(name)
    tokens = make_tokens(model, batch=2, length=40)
    parallel, _ = model(tokens)
    first, state = model(tokens[:, :17])
    second, _ = model(tokens[:, 17:], state)
    assert (torch.cat([first, second], dim=1) - parallel).abs().max() < PARITY_ATOL


@pytest.mark.parametrize("name", ["metastate-tiny", "rwkv7-tiny"])
def test_recurrent_state_size_is_constant_in_sequence_length(name, make_tiny, make_tokens):
    model = make_tiny(name)
    _, short = model(make_tokens(model, batch=1, length=3))
    _, long = model(make_tokens(model, batch=1, length=120))
    assert short.nbytes() == long.nbytes() > 0
    _, after_step = model(make_tokens(model, batch=1, length=1), long)
    assert after_step.nbytes() == long.nbytes()


def test_transformer_cache_grows_with_tokens(make_tiny, make_tokens):
    model = make_tiny("transformer-tiny")
    _, short = model(make_tokens(model, batch=1, length=3))
    _, long = model(make_tokens(model, batch=1, length=12))
    assert long.nbytes() == 4 * short.nbytes()


def test_gradients_reach_every_parameter(make_tiny, make_tokens):
    for name in ("metastate-tiny-wide", "rwkv7-tiny", "transformer-tiny"):
        model = make_tiny(name)
        logits, _ = model(make_tokens(model, batch=2, length=9))
        logits.logsumexp(-1).mean().backward()
        missing = [n for n, p in model.named_parameters()
                   if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"{name}: no gradient for {missing}"


def test_detached_state_cuts_the_graph(make_tiny, make_tokens):
    model = make_tiny("metastate-tiny")
    _, state = model(make_tokens(model, batch=1, length=5))
    assert state.layers[0]["wkv"].requires_grad
    assert not any(t.requires_grad for layer in state.detach().layers for t in layer.values())


@pytest.mark.parametrize("name", ["metastate-tiny", "transformer-tiny"])
def test_malformed_tokens_are_rejected(name):
    """Shape and dtype are checked on every forward (no sync); the id range where ids enter
    (tests/model/test_decode_step.py)."""
    model = build_model(model_preset(name))
    with pytest.raises(ValueError, match=r"2-D tensor \[batch, time\]"):
        model(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="int64 token ids"):
        model(torch.tensor([[1.0, 2.0]]))


def test_state_from_another_model_is_rejected(make_tiny, make_tokens):
    small = make_tiny("rwkv7-tiny")
    deeper = make_tiny("rwkv7-tiny", n_layer=3)
    _, state = small(make_tokens(small, batch=1, length=4))
    with pytest.raises(ValueError, match="state has 2 layers but the model has 3"):
        deeper(make_tokens(deeper, batch=1, length=4), state)
