import pytest
import torch

from ops import resolve_backend, wkv7


def _inputs(B=1, T=4, H=2, N=8):
    return [torch.randn(B, T, H, N) for _ in range(6)]


def test_mismatched_shape_names_the_argument():
    r, w, k, v, a, b = _inputs()
    with pytest.raises(ValueError, match=r"v has shape \(1, 4, 2, 7\), expected \(1, 4, 2, 8\)"):
        wkv7(r, w, k, torch.randn(1, 4, 2, 7), a, b)


def test_three_dimensional_input_is_rejected():
    r, w, k, v, a, b = _inputs()
    with pytest.raises(ValueError, match=r"k must be a 4-D tensor \[B, T, H, N\]"):
        wkv7(r, w, k[0], v, a, b)


def test_mixed_dtypes_are_rejected():
    r, w, k, v, a, b = _inputs()
    with pytest.raises(ValueError, match="a has dtype torch.float64, expected torch.float32"):
        wkv7(r, w, k, v, a.double(), b)


def test_integer_input_is_rejected():
    r, w, k, v, a, b = _inputs()
    with pytest.raises(ValueError, match="r has dtype torch.int64, expected a floating dtype"):
        wkv7(r.long(), w, k, v, a, b)


def test_wrong_initial_state_shape_names_expected_shape():
    r, w, k, v, a, b = _inputs()
    with pytest.raises(ValueError, match=r"initial_state has shape \(1, 2, 8\), expected \(1, 2, 8, 8\)"):
        wkv7(r, w, k, v, a, b, initial_state=torch.zeros(1, 2, 8))


def test_empty_sequence_is_rejected():
    r, w, k, v, a, b = _inputs(T=0)
    with pytest.raises(ValueError, match="sequence length T is 0"):
        wkv7(r, w, k, v, a, b)


def test_unknown_backend_lists_choices():
    with pytest.raises(ValueError, match="unknown backend 'triton'; choose one of auto, reference"):
        wkv7(*_inputs(), backend="triton")


def test_fla_on_cpu_says_to_use_chunked(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")   # without the interpreter (tests/conftest.py sets it)
    with pytest.raises(ValueError, match="backend 'fla' needs CUDA tensors.*use backend='chunked'"):
        wkv7(*_inputs(), backend="fla")


def test_auto_picks_chunked_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "chunked"


@pytest.mark.parametrize("chunk_size", [0, 48, 128, 256])
def test_chunk_sizes_outside_the_fp32_safe_range_are_rejected(chunk_size):
    with pytest.raises(ValueError, match=f"power of two from 1 to 64 .*got {chunk_size}"):
        wkv7(*_inputs(), backend="chunked", chunk_size=chunk_size)


def test_the_largest_allowed_chunk_stays_exact_at_the_strongest_decay(wkv7_inputs):
    """L = 64 (the limit) at w = -e^{-1/2} everywhere: fp32 outputs and gradients stay finite and
    exact; L = 256 (accepted before) returned NaN here."""
    r, w, k, v, a, b, s0 = wkv7_inputs(1, 256, 2, 32, seed=0)
    w = torch.full_like(w, -0.6065306597126334)
    leaves = [x.float().requires_grad_(True) for x in (r, w, k, v, a, b)]
    y, _ = wkv7(*leaves, backend="chunked", chunk_size=64)
    y.square().sum().backward()
    y_ref, _ = wkv7(r, w, k, v, a, b, backend="reference")
    assert ((y.double() - y_ref).abs().max() / y_ref.abs().max()) < 1e-5
    assert all(torch.isfinite(x.grad).all() for x in leaves)
