"""fla's Triton kernel against our chunked backend; needs CUDA, skipped elsewhere."""

import pytest
import torch

from ops import wkv7, wkv7_sse
from ops.rwkv7 import fla_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not fla_available(), reason="needs CUDA with flash-linear-attention + triton"),
]


def rel_err(x, ref):
    return ((x.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("T", [1, 100, 1024])
def test_fla_matches_chunked(wkv7_inputs, dtype, tol, T):
    inputs = [x.float().cuda() for x in wkv7_inputs(2, T, 4, 64, seed=T)]
    s0 = inputs[6]
    y_ref, s_ref = wkv7(*inputs[:6], s0, True, backend="chunked")
    y, s = wkv7(*[x.to(dtype) for x in inputs[:6]], s0, True, backend="fla")
    assert rel_err(y, y_ref) < tol
    assert rel_err(s, s_ref) < tol


def test_fla_gradients_match_chunked(wkv7_inputs):
    inputs = [x.float().cuda() for x in wkv7_inputs(1, 256, 2, 64, seed=1)]

    def grads(backend):
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        y, s = wkv7(*leaves[:6], leaves[6], True, backend=backend)
        return torch.autograd.grad((y ** 2).sum() + s.sum(), leaves)

    for g, g_ref in zip(grads("fla"), grads("chunked")):
        assert rel_err(g, g_ref) < 5e-3


def test_fla_sse_readout_matches_chunked(wkv7_inputs):
    r, w, k, v, a, b, s0 = [x.float().cuda() for x in wkv7_inputs(1, 300, 2, 64, seed=2)]
    u = torch.randn_like(r)
    got = wkv7_sse(r, u, w, k, v, a, b, s0, True, backend="fla")
    ref = wkv7_sse(r, u, w, k, v, a, b, s0, True, backend="chunked")
    for g, want in zip(got, ref):
        assert rel_err(g, want) < 1e-3
