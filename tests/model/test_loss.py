"""`model(tokens, targets=...)`: the fused chunked loss equals cross-entropy of the logits."""

import pytest
import torch
import torch.nn.functional as F

from ops import OpsConfig

from .conftest import TINY, random_tokens, tiny_model

# 2 x 21 = 42 tokens in chunks of 16: two full chunks and a last one of 10
FUSED = OpsConfig(backend="chunked", chunk_size=16, loss_chunk_size=16)


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", TINY)
def test_fused_loss_and_every_gradient_equal_the_logits_path(name):
    model = tiny_model(name, FUSED)
    tokens = random_tokens(model, 2, 22)
    logits, _ = model(tokens[:, :-1])
    plain = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    plain.backward()
    want = gradients(model)
    model.zero_grad(set_to_none=True)
    fused, state = model(tokens[:, :-1], targets=tokens[:, 1:])
    fused.backward()
    got = gradients(model)
    assert state.seen_tokens == 21
    assert abs(fused.item() - plain.item()) <= 1e-6 * plain.item()
    assert got.keys() == want.keys() and "head.weight" in got
    for key in want:
        # fp32 rounding differences (~1e-7) of dL/dh grow through the recurrences' backward
        # (measured up to 3.4e-6 relative on blocks.0.att.w0); the head's own gradient does not
        bound = 1e-6 if key in ("head.weight", "ln_out.weight") else 1e-5
        scale = want[key].abs().max().clamp_min(1e-30)
        assert (got[key] - want[key]).abs().max() <= bound * scale, key


def test_per_token_and_summed_losses_keep_the_batch_shape():
    model = tiny_model("rwkv7-tiny", FUSED)
    tokens = random_tokens(model, 2, 22)
    targets = tokens[:, 1:].clone()
    targets[1, -5:] = -100                       # padding: no loss
    with torch.no_grad():
        logits, _ = model(tokens[:, :-1])
        per_token, _ = model(tokens[:, :-1], targets=targets, reduction="none")
        total, _ = model(tokens[:, :-1], targets=targets, reduction="sum")
    want = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    assert per_token.shape == (2, 21)
    torch.testing.assert_close(per_token, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(per_token[1, -5:], torch.zeros(5))
    torch.testing.assert_close(total, want.sum(), rtol=1e-6, atol=0)


def test_targets_of_another_shape_are_an_error():
    model = tiny_model("rwkv7-tiny", FUSED)
    tokens = random_tokens(model, 2, 8)
    with pytest.raises(ValueError, match="targets .* must have the shape of the tokens"):
        model(tokens[:, :-1], targets=tokens)
