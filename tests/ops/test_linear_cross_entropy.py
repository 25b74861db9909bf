"""The fused, chunked head + cross-entropy against the plain whole-logits computation."""

import pytest
import torch

from ops.linear_cross_entropy import (
    IGNORE_INDEX,
    linear_cross_entropy,
    linear_cross_entropy_plain,
)

N, C, V = 37, 24, 101       # 37 tokens in chunks of 8: four full chunks and a last one of 5


def inputs(dtype=torch.float32, ignored=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(V, C, generator=g, dtype=dtype) * 0.5).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g)
    targets[torch.randperm(N, generator=g)[:ignored]] = IGNORE_INDEX
    return hidden, weight, targets


def loss_and_grads(fn, hidden, weight, targets, upstream=0.37):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, targets)
    (loss * upstream).backward()   # an upstream gradient != 1, as in gradient accumulation
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


def relative_error(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_size", [8, 16, 64])
@pytest.mark.parametrize("ignored", [0, 9])
def test_fp32_loss_and_gradients_equal_the_plain_computation(reduction, chunk_size, ignored):
    hidden, weight, targets = inputs(ignored=ignored)
    want = loss_and_grads(lambda h, w, y: linear_cross_entropy_plain(h, w, y, reduction),
                          hidden, weight, targets)
    got = loss_and_grads(lambda h, w, y: linear_cross_entropy(h, w, y, chunk_size, reduction),
                         hidden, weight, targets)
    for name, a, b in zip(("loss", "d hidden", "d weight"), got, want):
        assert a.dtype == b.dtype, name
        assert relative_error(a, b) < 1e-6, name
    if ignored:
        ignored_rows = targets == IGNORE_INDEX
        assert torch.equal(got[1][ignored_rows], torch.zeros_like(got[1][ignored_rows]))


def test_per_token_losses_without_grad_equal_the_plain_ones():
    hidden, weight, targets = inputs(ignored=5)
    with torch.no_grad():
        got = linear_cross_entropy(hidden, weight, targets, 8, reduction="none")
        want = linear_cross_entropy_plain(hidden, weight, targets, reduction="none")
        mean = linear_cross_entropy(hidden, weight, targets, 8)
    assert got.shape == (N,) and relative_error(got, want) < 1e-6
    assert relative_error(mean, linear_cross_entropy_plain(hidden.detach(), weight.detach(), targets)) < 1e-6


def test_only_the_inputs_that_require_grad_get_one():
    hidden, weight, targets = inputs()
    weight.requires_grad_(False)
    linear_cross_entropy(hidden, weight, targets, 8).backward()
    assert hidden.grad is not None and weight.grad is None


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_bf16_autocast_is_close_to_the_plain_autocast_result(input_dtype):
    """Under autocast both paths multiply in bf16 and take the log-softmax in fp32; only the
    summation order of the weight gradient over chunks differs."""
    hidden, weight, targets = inputs()
    hidden = hidden.detach().to(input_dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = loss_and_grads(linear_cross_entropy_plain, hidden, weight, targets)
        got = loss_and_grads(lambda h, w, y: linear_cross_entropy(h, w, y, 8), hidden, weight, targets)
    assert got[0].dtype == torch.float32
    assert got[1].dtype == input_dtype and got[2].dtype == torch.float32
    assert relative_error(got[0], want[0]) < 1e-5
    assert relative_error(got[1], want[1]) < 1e-2
    assert relative_error(got[2], want[2]) < 1e-2
    exact = loss_and_grads(linear_cross_entropy_plain, hidden.detach().float().requires_grad_(),
                           weight, targets)
    assert relative_error(got[0], exact[0]) < 1e-2   # and bf16 is still near the fp32 truth


def test_bad_arguments_name_the_fix():
    hidden, weight, targets = inputs()
    with pytest.raises(ValueError, match="reduction must be one of"):
        linear_cross_entropy(hidden, weight, targets, 8, reduction="avg")
    with pytest.raises(ValueError, match="chunk_size must be >= 0"):
        linear_cross_entropy(hidden, weight, targets, -1)
    with pytest.raises(ValueError, match=r"hidden must be \[N, C\]"):
        linear_cross_entropy(hidden[None], weight, targets, 8)


def test_a_second_backward_through_the_same_graph_is_refused():
    hidden, weight, targets = inputs()
    loss = linear_cross_entropy(hidden, weight, targets, 8)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()
