"""Wkv7Transition / Wkv7Scan: the Meta-State layer's three recurrences over one transition."""

import pytest
import torch

from ops import Wkv7Transition, meta_state_scan, wkv7

from .test_wkv7 import FP64_REL_TOL, rel_err


@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_read_after_scan_equals_a_second_scan(wkv7_inputs, backend):
    r, w, k, v, a, b, s0 = wkv7_inputs(2, 45, 2, 16, seed=20)
    u = torch.randn_like(r)
    scan = Wkv7Transition(w, a, b, backend, chunk_size=16).scan(r, k, v, s0, output_final_state=True)
    y_ref, s_ref = wkv7(r, w, k, v, a, b, s0, True, backend="reference")
    z_ref, _ = wkv7(u, w, k, v, a, b, s0, backend="reference")
    assert rel_err(scan.output, y_ref) < FP64_REL_TOL
    assert rel_err(scan.final_state, s_ref) < FP64_REL_TOL
    assert rel_err(scan.read(u), z_ref) < FP64_REL_TOL


def _meta_state_layer(backend, r, w, k, v, a, b, s0, m0):
    """The Meta-State layer's data flow: the SSE query depends on the TimeMix output."""
    transition = Wkv7Transition(w, a, b, backend, chunk_size=16)
    timemix = transition.scan(r, k, v, s0, output_final_state=True)
    u = torch.tanh(timemix.output) + r  # u_t known only after y_t, as through the residual
    z = torch.nn.functional.normalize(torch.relu(timemix.read(u)), dim=-1)
    o, m = meta_state_scan(z, w, a, b, m0, output_final_state=True, transition=transition)
    return timemix.output, o, timemix.final_state, m


def test_layer_data_flow_forward_and_gradients_match_reference(wkv7_inputs):
    r, w, k, v, a, b, s0 = wkv7_inputs(1, 40, 2, 16, seed=21)
    m0 = torch.randn_like(s0) * 0.1

    def grads(backend):
        leaves = [x.clone().requires_grad_(True) for x in (r, w, k, v, a, b, s0, m0)]
        outs = _meta_state_layer(backend, *leaves)
        loss = sum((o * torch.sin(o)).sum() for o in outs)
        return outs, torch.autograd.grad(loss, leaves)

    outs, got = grads("chunked")
    outs_ref, ref = grads("reference")
    for o, o_ref in zip(outs, outs_ref):
        assert rel_err(o, o_ref) < FP64_REL_TOL
    for name, g, g_ref in zip(("r", "w", "k", "v", "a", "b", "s0", "m0"), got, ref):
        assert rel_err(g, g_ref) < 1e-10, name


def test_shared_transition_equals_a_fresh_meta_state_scan(wkv7_inputs):
    _, w, z, _, a, b, m0 = (x.float() for x in wkv7_inputs(2, 70, 2, 32, seed=22))
    transition = Wkv7Transition(w, a, b, "chunked")
    shared, m_shared = meta_state_scan(z, w, a, b, m0, True, transition=transition)
    fresh, m_fresh = meta_state_scan(z, w, a, b, m0, True, backend="chunked")
    assert torch.equal(shared, fresh) and torch.equal(m_shared, m_fresh)


def test_chunked_outputs_are_bitwise_causal(wkv7_inputs):
    r, w, k, v, a, b, _ = (x.float() for x in wkv7_inputs(1, 64, 2, 32, seed=23))
    u = torch.randn_like(r)
    t = 37  # inside the second chunk: earlier tokens of the same chunk must not move at all
    changed = [x.clone() for x in (r, w, k, v, a, b, u)]
    for x in changed:
        x[:, t:] = torch.randn_like(x[:, t:])
    changed[1] = -torch.rand_like(w) * 0.6  # keep w a valid log-decay
    changed[1][:, :t] = w[:, :t]

    def outputs(r, w, k, v, a, b, u):
        scan = Wkv7Transition(w, a, b, "chunked").scan(r, k, v)
        return scan.output, scan.read(u)

    for before, after in zip(outputs(r, w, k, v, a, b, u), outputs(*changed)):
        assert torch.equal(before[:, :t], after[:, :t])
        assert not torch.equal(before[:, t:], after[:, t:])


def test_read_rejects_a_query_of_another_shape(wkv7_inputs):
    r, w, k, v, a, b, _ = wkv7_inputs(1, 8, 2, 16)
    scan = Wkv7Transition(w, a, b, "chunked").scan(r, k, v)
    with pytest.raises(ValueError, match=r"q has shape \(1, 7, 2, 16\), expected \(1, 8, 2, 16\)"):
        scan.read(r[:, :7])
