"""The one-token WKV-7 step (ops/rwkv7/step.py, the chunked backend's T = 1 path) against the
float64 step loop: outputs, final state, the SSE read-out, the meta-state scan and gradients."""

import pytest
import torch

from ops import Wkv7Transition, meta_state_scan, wkv7
from ops.rwkv7 import wkv7_reference
from ops.rwkv7.step import rwkv7_one_token

from .test_wkv7 import FP32_REL_TOL, FP64_REL_TOL, rel_err


@pytest.mark.parametrize("dtype, tol", [(torch.float64, FP64_REL_TOL), (torch.float32, FP32_REL_TOL)])
@pytest.mark.parametrize("with_state", [True, False])
def test_one_step_output_state_and_readout_equal_the_reference(wkv7_inputs, dtype, tol, with_state):
    r, w, k, v, a, b, s0 = wkv7_inputs(2, 1, 3, 16, seed=5)
    u = torch.randn_like(r)
    s0 = s0 if with_state else None
    (y_ref, z_ref), s_ref = wkv7_reference((r, u), w, k, v, a, b, s0, True)
    transition = Wkv7Transition(*(x.to(dtype) for x in (w, a, b)), backend="chunked")
    assert transition.one_step and transition.chunked is None
    scan = transition.scan(*(x.to(dtype) for x in (r, k, v)),
                           initial_state=None if s0 is None else s0.to(dtype), output_final_state=True)
    z = scan.read(u.to(dtype))
    assert scan.output.dtype == dtype and scan.output.shape == r.shape
    assert rel_err(scan.output, y_ref) < tol
    assert rel_err(z, z_ref) < tol
    assert rel_err(scan.final_state, s_ref) < tol


def test_one_step_meta_state_equals_the_reference(wkv7_inputs):
    _, w, z, _, a, b, m0 = wkv7_inputs(2, 1, 2, 16, seed=6)
    o, m = meta_state_scan(z, w, a, b, m0, True, backend="chunked")
    (o_ref,), m_ref = wkv7_reference((z,), w, z, z, a, b, m0, True)
    assert rel_err(o, o_ref) < FP64_REL_TOL and rel_err(m, m_ref) < FP64_REL_TOL


def test_one_step_gradients_equal_the_reference_in_float64(wkv7_inputs):
    inputs = [x.requires_grad_() for x in wkv7_inputs(1, 1, 2, 8, seed=7)]

    def grads(backend):
        y, s = wkv7(*inputs, output_final_state=True, backend=backend)
        g = torch.Generator().manual_seed(0)
        loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() + \
            (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
        return torch.autograd.grad(loss, inputs)

    for name, got, want in zip("rwkvab", grads("chunked"), grads("reference")):
        assert rel_err(got, want) < FP64_REL_TOL, name


def test_one_step_under_bf16_autocast_computes_in_fp32(wkv7_inputs):
    r, w, k, v, a, b, s0 = (x.float() for x in wkv7_inputs(1, 1, 2, 16, seed=8))
    y_ref, s_ref = wkv7(r, w, k, v, a, b, s0, True, backend="chunked")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = wkv7(r, w, k, v, a, b, s0, True, backend="chunked")
    assert y.dtype == torch.float32 and torch.equal(y, y_ref) and torch.equal(s, s_ref)


@pytest.mark.parametrize("with_state", [True, False])
def test_rwkv7_one_token_equals_the_reference_in_float64(wkv7_inputs, with_state):
    """The decode step's direct path (no transition object): a = -kk and b = kk * a_gate."""
    r, w, k, v, minus_kk, kk_a, s0 = wkv7_inputs(2, 1, 3, 16, seed=9)
    s0 = s0 if with_state else None
    (y_ref,), s_ref = wkv7_reference((r,), w, k, v, minus_kk, kk_a, s0, True)
    y, s = rwkv7_one_token(*(x[:, 0] for x in (r, w, k, v, -minus_kk, kk_a)), s0)
    assert y.shape == r[:, 0].shape and s.shape == s_ref.shape
    assert rel_err(y, y_ref[:, 0]) < FP64_REL_TOL and rel_err(s, s_ref) < FP64_REL_TOL


def test_rwkv7_one_token_runs_low_precision_inputs_in_fp32(wkv7_inputs):
    """bf16 vectors (a model cast to bf16): the update and the state are fp32, y comes back in
    bf16, and both equal the fp32 computation on the same (rounded) inputs."""
    r, w, k, v, minus_kk, kk_a, s0 = wkv7_inputs(1, 1, 2, 16, seed=10)
    vectors = [x[:, 0].to(torch.bfloat16) for x in (r, w, k, v, -minus_kk, kk_a)]
    y, s = rwkv7_one_token(*vectors, s0.to(torch.bfloat16))
    y32, s32 = rwkv7_one_token(*(x.float() for x in vectors), s0.to(torch.bfloat16).float())
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert torch.equal(s, s32) and torch.equal(y, y32.to(torch.bfloat16))
