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


def test_fla_on_cpu_says_to_use_chunked():
    with pytest.raises(ValueError, match="backend 'fla' needs CUDA tensors.*use backend='chunked'"):
        wkv7(*_inputs(), backend="fla")


def test_auto_picks_chunked_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "chunked"


def test_bad_chunk_size_is_rejected():
    with pytest.raises(ValueError, match="chunk_size=0 is out of range"):
        wkv7(*_inputs(), backend="chunked", chunk_size=0)
