"""fla's Triton kernels on CPU under Triton's interpreter (ops/rwkv7/triton_interpreter.py).

The GPU path's kernel is exercised here without a GPU: `ops.wkv7(backend="fla")` against the
float64 step loop (outputs, final state and every gradient), fla's fast chunk-64 settings and its
default chunk-16 path, the whole Meta-State layer and a short training run. The interpreter is
exact fp32 arithmetic (its dot is numpy's, no TF32); bf16 is not faithful there, so fp16 is the
half-precision check. tests/conftest.py sets TRITON_INTERPRET=1 when there is no CUDA.
"""

import warnings

import pytest
import torch

from ops import OpsConfig, wkv7
from ops.rwkv7 import wkv7_fla, wkv7_reference
from ops.rwkv7.fla import FAST_CHUNK_SIZE, RWKV7_LOG_DECAY_MIN, fla_call_settings
from ops.rwkv7.triton_interpreter import interpreter_on

pytestmark = [
    pytest.mark.interpret,
    pytest.mark.skipif(not interpreter_on(), reason="needs TRITON_INTERPRET=1 (tests/conftest.py)"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning"),
]

NAMES = ("y", "state", "r", "w", "k", "v", "a", "b", "initial_state")
# fp32: fla's default chunk-16 path is exact to ~5e-7 of float64 here (bound 1e-5). The fast
# chunk-64 path factors the decays around the chunk's middle row, whose products lose ~2 digits at
# RWKV-7's strongest decays: measured 1e-5..1.1e-4 (gradient of a), bound 3e-4, still 10x below
# bf16's resolution. fp16: <= 8e-4 measured, and 4e-3 absolute on the all-zero gradient of w at
# T = 1 from a zero state (fp16 noise against O(1) gradients); bound 1e-2.
FAST_FP32, PRECISE_FP32, FP16 = 3e-4, 1e-5, 1e-2


def rel_err(x, ref):
    """Max abs error over the reference's max abs value; absolute where the reference is all zero
    (the gradient of w at T = 1 from a zero state)."""
    scale = ref.abs().max()
    return ((x.double() - ref).abs().max() / (scale if scale > 0 else 1.0)).item()


def outputs_and_grads(run, inputs, dtype, with_state):
    """Forward + backward of a random linear loss of (y, final state); returns y, the state and
    the gradient of every input (initial state included when given)."""
    leaves = [x.to(dtype).clone().requires_grad_(True) for x in inputs]
    r, w, k, v, a, b, s0 = leaves
    (y,), state = run((r,), w, k, v, a, b, s0 if with_state else None, True)
    g = torch.Generator().manual_seed(1)
    loss = (y.double() * torch.randn(y.shape, generator=g, dtype=torch.float64)).sum() \
        + (state.double() * torch.randn(state.shape, generator=g, dtype=torch.float64)).sum()
    grads = torch.autograd.grad(loss, leaves if with_state else leaves[:6])
    return (y, state, *grads)


def compare_with_reference(inputs, dtype, with_state, bound, **fla_kwargs):
    def fla(*args):
        return wkv7_fla(*args, **fla_kwargs)

    got = outputs_and_grads(fla, inputs, dtype, with_state)
    # the reference sees the same rounded inputs, in float64
    rounded = [x.to(dtype).double() for x in inputs]
    want = outputs_and_grads(wkv7_reference, rounded, torch.float64, with_state)
    errors = {name: rel_err(g, w) for name, g, w in zip(NAMES, got, want)}
    assert max(errors.values()) < bound, errors
    assert got[0].dtype == dtype


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("T", [1, 64, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_fla_fast_settings_match_float64_reference(wkv7_inputs, dtype, T, with_state):
    bound = FAST_FP32 if dtype == torch.float32 else FP16
    compare_with_reference(wkv7_inputs(1, T, 2, 32, seed=T), dtype, with_state, bound)


@pytest.mark.parametrize("T", [64, 100])
def test_fla_default_settings_match_float64_reference_to_1e5(wkv7_inputs, T):
    compare_with_reference(wkv7_inputs(1, T, 2, 32, seed=T), torch.float32, True, PRECISE_FP32, fast=False)


def test_fast_settings_are_what_the_backend_passes():
    from fla.ops.rwkv7 import chunk_rwkv7

    assert fla_call_settings(chunk_rwkv7) == {
        "safe_gate": True, "chunk_size": FAST_CHUNK_SIZE, "lower_bound": RWKV7_LOG_DECAY_MIN}
    assert fla_call_settings(chunk_rwkv7, fast=False) == {}

    def older_fla(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False):
        """The signature of fla versions before the fast RWKV-7 arguments."""

    assert fla_call_settings(older_fla) == {}      # versions without the arguments: the plain call


def test_public_wkv7_accepts_cpu_tensors_only_under_the_interpreter(wkv7_inputs, monkeypatch):
    r, w, k, v, a, b, s0 = (x.float() for x in wkv7_inputs(1, 20, 2, 16, seed=3))
    y, state = wkv7(r, w, k, v, a, b, s0, True, backend="fla")
    y_ref, state_ref = wkv7(r, w, k, v, a, b, s0, True, backend="chunked")
    assert rel_err(y, y_ref.double()) < FAST_FP32 and rel_err(state, state_ref.double()) < FAST_FP32
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        wkv7(r, w, k, v, a, b, backend="fla")


def test_meta_state_layer_through_fla_matches_chunked():
    """TimeMix scan, SSE read-out (a second fla call from the same initial state) and the
    meta-state scan over the shared transition: logits and every parameter gradient."""
    from model import build_model, model_preset

    torch.manual_seed(0)
    cfg = model_preset("metastate-tiny", n_layer=1)
    fla_model = build_model(cfg, OpsConfig(backend="fla"))
    with torch.no_grad():   # leave the zero inits (W_o, W_oms, LoRA A) so every path counts
        for p in fla_model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    chunked_model = build_model(cfg, OpsConfig(backend="chunked"))
    chunked_model.load_state_dict(fla_model.state_dict())
    tokens = torch.randint(0, cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    results = []
    for model in (fla_model, chunked_model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logits, _ = model(tokens)
        logits.square().mean().backward()
        results.append((logits, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (logits, grads), (logits_ref, grads_ref) = results
    assert rel_err(logits, logits_ref.double()) < 1e-4
    assert grads.keys() == grads_ref.keys() and "blocks.0.meta.output.weight" in grads
    for name, grad in grads.items():
        assert rel_err(grad, grads_ref[name].double()) < 1e-3, name
