"""The chunked WKV-7 backend against the float64 step loop (forward, final state, gradients).

Tolerances: run in float64, the chunked algebra must agree with the step loop to ~1e-12 (it is
the same math reassociated). In fp32, merely rounding the inputs to fp32 moves y by ~6e-8 of
max|y| on these inputs; the chunked path in fp32 stays within 3e-7 (measured for T up to 1000:
the L x L triangular solve and the chunk-to-chunk products add a few ulps). 2e-6 relative leaves
~7x headroom while any real bug (a wrong decay exponent, a missing term) is off by > 1e-2.
"""

import pytest
import torch

from ops import meta_state_scan, wkv7, wkv7_sse
from ops.rwkv7 import wkv7_chunked, wkv7_reference

FP32_REL_TOL = 2e-6
FP64_REL_TOL = 1e-11


def rel_err(x, ref):
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("T", [1, 7, 32, 100])
@pytest.mark.parametrize("chunk_size", [16, 32, 64])
def test_chunked_equals_reference_in_float64(wkv7_inputs, T, chunk_size):
    r, w, k, v, a, b, s0 = wkv7_inputs(2, T, 3, 16, seed=T)
    y_ref, s_ref = wkv7(r, w, k, v, a, b, s0, True, backend="reference")
    y, s = wkv7(r, w, k, v, a, b, s0, True, backend="chunked", chunk_size=chunk_size)
    assert rel_err(y, y_ref) < FP64_REL_TOL
    assert rel_err(s, s_ref) < FP64_REL_TOL


@pytest.mark.parametrize("T", [1, 45, 200])
def test_chunked_fp32_forward_and_final_state(wkv7_inputs, T):
    inputs64 = wkv7_inputs(2, T, 2, 64, seed=1)
    y_ref, s_ref = wkv7(*inputs64[:6], inputs64[6], True, backend="reference")
    r, w, k, v, a, b, s0 = (x.float() for x in inputs64)
    y, s = wkv7(r, w, k, v, a, b, s0, True, backend="chunked")
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    assert rel_err(y, y_ref) < FP32_REL_TOL
    assert rel_err(s, s_ref) < FP32_REL_TOL


def _grads(fn, inputs, seed=0):
    """Gradients of <y, gy> + <S_T, gs> w.r.t. every input, the initial state included."""
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    y, s = fn(*inputs)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    gs = torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.dtype)
    return torch.autograd.grad((y * gy).sum() + (s * gs).sum(), inputs)


NAMES = ("r", "w", "k", "v", "a", "b", "initial_state")


@pytest.mark.parametrize("T", [5, 40])
def test_chunked_gradients_equal_reference_in_float64(wkv7_inputs, T):
    inputs = wkv7_inputs(1, T, 2, 16, seed=3)
    ref = _grads(lambda *x: wkv7(*x[:6], x[6], True, backend="reference"), inputs)
    got = _grads(lambda *x: wkv7(*x[:6], x[6], True, backend="chunked", chunk_size=16), inputs)
    for name, g, g_ref in zip(NAMES, got, ref):
        assert rel_err(g, g_ref) < 1e-10, name


def test_chunked_gradients_fp32(wkv7_inputs):
    inputs = wkv7_inputs(2, 70, 2, 32, seed=4)
    ref = _grads(lambda *x: wkv7(*x[:6], x[6], True, backend="reference"), inputs)
    got = _grads(lambda *x: wkv7(*x[:6], x[6], True, backend="chunked"), [x.float() for x in inputs])
    for name, g, g_ref in zip(NAMES, got, ref):
        assert g.dtype == torch.float32
        assert rel_err(g, g_ref) < 20 * FP32_REL_TOL, name


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_one_call_equals_two_calls_with_carried_state(wkv7_inputs, backend):
    r, w, k, v, a, b, s0 = (x.float() for x in wkv7_inputs(2, 77, 2, 32, seed=5))
    y_full, s_full = wkv7(r, w, k, v, a, b, s0, True, backend=backend)
    cut = 45  # not a chunk boundary
    first = [x[:, :cut] for x in (r, w, k, v, a, b)]
    second = [x[:, cut:] for x in (r, w, k, v, a, b)]
    y1, s1 = wkv7(*first, s0, True, backend=backend)
    y2, s2 = wkv7(*second, s1, True, backend=backend)
    assert rel_err(torch.cat([y1, y2], 1), y_full) < FP32_REL_TOL
    assert rel_err(s2, s_full) < FP32_REL_TOL


def test_zero_initial_state_equals_no_initial_state(wkv7_inputs):
    r, w, k, v, a, b, s0 = (x.float() for x in wkv7_inputs(1, 20, 2, 16, seed=6))
    y_none, _ = wkv7(r, w, k, v, a, b, backend="chunked")
    y_zero, _ = wkv7(r, w, k, v, a, b, torch.zeros_like(s0), backend="chunked")
    assert torch.equal(y_none, y_zero)
    assert wkv7(r, w, k, v, a, b, backend="chunked")[1] is None


def test_sse_readout_equals_a_second_scan_with_query_u(wkv7_inputs):
    r, w, k, v, a, b, s0 = wkv7_inputs(2, 50, 2, 16, seed=7)
    u = torch.randn_like(r)
    y, z, s = wkv7_sse(r, u, w, k, v, a, b, s0, True, backend="chunked", chunk_size=16)
    y_ref, s_ref = wkv7(r, w, k, v, a, b, s0, True, backend="reference")
    z_ref, _ = wkv7(u, w, k, v, a, b, s0, False, backend="reference")
    for got, ref in ((y, y_ref), (z, z_ref), (s, s_ref)):
        assert rel_err(got, ref) < FP64_REL_TOL


def test_sse_gradients_equal_reference(wkv7_inputs):
    r, w, k, v, a, b, s0 = wkv7_inputs(1, 37, 2, 16, seed=8)
    u = torch.randn_like(r)

    def run(backend):
        leaves = [x.clone().requires_grad_(True) for x in (r, u, w, k, v, a, b, s0)]
        y, z, s = wkv7_sse(*leaves[:7], leaves[7], True, backend=backend, chunk_size=16)
        loss = (y * torch.cos(y)).sum() + (z ** 2).sum() + (s * 0.3).sum()
        return torch.autograd.grad(loss, leaves)

    for g, g_ref in zip(run("chunked"), run("reference")):
        assert rel_err(g, g_ref) < 1e-10


def test_meta_state_scan_is_wkv7_with_key_value_query_z(wkv7_inputs):
    _, w, z, _, a, b, m0 = wkv7_inputs(2, 33, 2, 16, seed=9)
    o, m = meta_state_scan(z, w, a, b, m0, True, backend="chunked")
    ys, m_ref = wkv7_reference((z,), w, z, z, a, b, m0, True)
    assert rel_err(o, ys[0]) < FP64_REL_TOL
    assert rel_err(m, m_ref) < FP64_REL_TOL


def test_bf16_inputs_return_bf16_close_to_fp32(wkv7_inputs):
    inputs = [x.float() for x in wkv7_inputs(1, 64, 2, 32, seed=10)]
    y32, _ = wkv7(*inputs[:6], inputs[6], backend="chunked")
    y16, s16 = wkv7(*[x.bfloat16() for x in inputs[:6]], inputs[6], True, backend="chunked")
    assert y16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    assert rel_err(y16, y32) < 0.05  # bf16 inputs carry 8 bits of mantissa


def test_state_stays_bounded_over_long_sequences(wkv7_inputs):
    # RWKV-7's transition diag(d) - kk (a*kk)^T has norm <= 1, so the state cannot blow up.
    r, w, k, v, a, b, _ = (x.float() for x in wkv7_inputs(1, 2048, 1, 16, seed=11))
    y, s = wkv7(r, w, k, v, a, b, output_final_state=True, backend="chunked")
    assert torch.isfinite(y).all() and s.abs().max() < 100


def test_chunked_direct_call_matches_dispatch(wkv7_inputs):
    r, w, k, v, a, b, s0 = (x.float() for x in wkv7_inputs(1, 10, 1, 8, seed=12))
    (y,), _ = wkv7_chunked((r,), w, k, v, a, b, s0, False, 32)
    assert torch.equal(y, wkv7(r, w, k, v, a, b, s0, backend="chunked")[0])


# bf16: both backends compute from the same bf16-rounded inputs (reference in float64, chunked in
# fp32) and round y back to bf16, so they differ by at most a rounding of the output: measured
# <= 1 bf16 ulp of max|y| (2^-8 = 3.9e-3 relative); bound 8e-3. The state stays fp32 in both.
BF16_REL_TOL = 8e-3


@pytest.mark.parametrize("T", [1, 100])
def test_chunked_and_reference_agree_on_bf16_inputs(wkv7_inputs, T):
    r, w, k, v, a, b, s0 = (x.bfloat16() for x in wkv7_inputs(2, T, 2, 32, seed=T))
    y_ref, s_ref = wkv7(r, w, k, v, a, b, s0, True, backend="reference")
    y, s = wkv7(r, w, k, v, a, b, s0, True, backend="chunked")
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert s.dtype == s_ref.dtype == torch.float32
    assert rel_err(y, y_ref) < BF16_REL_TOL
    assert rel_err(s, s_ref) < 1e-5          # fp32 vs float64 from the same inputs


def test_chunked_under_bf16_autocast_computes_in_fp32(wkv7_inputs):
    """Under torch.autocast the chunked backend's matmuls would run in bf16 and write into its
    fp32 state buffers ("Bad in-place call"): it turns autocast off, so outputs and gradients are
    bitwise those of the plain fp32 call. (The backward runs after the region, as PyTorch's AMP
    guide asks and the trainer does: inside it, autograd would autocast every op's backward.)"""
    inputs = [x.float() for x in wkv7_inputs(1, 70, 2, 32, seed=5)]
    u = torch.randn_like(inputs[0])

    def run(autocast: bool):
        leaves = [x.clone().requires_grad_(True) for x in (*inputs, u)]
        r, w, k, v, a, b, s0, q = leaves
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y, z, s = wkv7_sse(r, q, w, k, v, a, b, s0, True, backend="chunked")
            loss = (y * z).sum() + s.square().sum()
        loss.backward()
        return (y, z, s, *(x.grad for x in leaves))

    for got, want in zip(run(True), run(False)):
        assert got.dtype == want.dtype == torch.float32
        assert torch.equal(got, want)
