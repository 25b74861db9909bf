"""The Meta-State layer: its math (DESIGN.md section 2) against an explicit per-token loop,
float64 gradient checks on the reference backend, the chunked backend against the reference,
and the config switches sse / z_norm / out_norm / meta_shift / meta_decay."""

import pytest
import torch
import torch.nn.functional as F

from model import model_preset
from model.config import validate_model_config
from model.meta_state import MetaStateLayer
from model.time_mix import TimeMix

from .conftest import CHUNKED, REFERENCE, perturb, tiny_model


def layer_pair(ops_cfg, dtype=torch.float64, seed=0, **overrides):
    """Layer 1 of a tiny metastate model: its TimeMix and Meta-State layer, perturbed."""
    torch.manual_seed(seed)
    cfg = model_preset("metastate-tiny", **overrides)
    time_mix, meta = TimeMix(cfg, 1, ops_cfg), MetaStateLayer(cfg, 1, ops_cfg)
    time_mix.init_weights()
    meta.init_weights()
    return perturb(time_mix.to(dtype), seed=seed), perturb(meta.to(dtype), seed=seed + 1), cfg


def run_pair(time_mix, meta, x, v_first, state=None):
    state = state or {}
    _, _, _, _, transition = time_mix(x, v_first, state.get("att_shift"), state.get("wkv"))
    out, shift, meta_state = meta(x, transition, state.get("ffn_shift"), state.get("meta"))
    return out, meta_state


def explicit_meta_state(time_mix, meta, x, v_first):
    """DESIGN.md section 2 written token by token, independent of ops/."""
    B, T, C = x.shape
    H, N = meta.n_head, meta.head_size
    _, _, _, _, scan = time_mix(x, v_first)
    w, a, b = scan.transition.w, scan.transition.a, scan.transition.b
    k, v = scan.k, scan.v
    # meta_decay=own: M decays by exp(-e^{-1/2} sigmoid(w0_m)), the same for every token
    w_m = w if not hasattr(meta, "w0") else (
        -0.6065306597 * torch.sigmoid(meta.w0)).view(1, 1, H, N).expand(B, T, H, N)
    xm = x if meta.x_m is None else x + (F.pad(x, (0, 0, 1, -1)) - x) * meta.x_m
    u = (meta.input(xm) if meta.input is not None else xm).view(B, T, H, N)
    S = x.new_zeros(B, H, N, N)
    M = x.new_zeros(B, H, N, N)
    outs = []
    for t in range(T):
        rank_one = a[:, t, :, :, None] * b[:, t, :, None, :]
        S = S @ (torch.diag_embed(w[:, t].exp()) + rank_one) + v[:, t, :, :, None] * k[:, t, :, None, :]
        weight = S if not hasattr(meta, "sse_weight") else meta.sse_weight
        z = F.normalize(torch.relu((weight @ u[:, t, :, :, None]).squeeze(-1)), dim=-1, eps=1e-12)
        M = M @ (torch.diag_embed(w_m[:, t].exp()) + rank_one) + z[..., :, None] * z[..., None, :]
        o = (M @ z[..., None]).squeeze(-1)
        outs.append(F.group_norm(o.reshape(B, H * N), H, meta.ln_out.weight, meta.ln_out.bias,
                                 meta.ln_out.eps))
    return meta.output(torch.stack(outs, dim=1)), M


def inputs(cfg, B=2, T=9, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    C_s = cfg.d_state or cfg.d_model
    x = torch.randn(B, T, cfg.d_model, generator=g, dtype=dtype)
    v_first = torch.randn(B, T, C_s, generator=g, dtype=dtype)
    return x, v_first


@pytest.mark.parametrize("reading", [{}, dict(meta_shift=False), dict(meta_decay="own"),
                                     dict(sse="learned")], ids=["default", "no-shift", "own-decay",
                                                                "learned-sse"])
@pytest.mark.parametrize("ops_cfg", [REFERENCE, CHUNKED], ids=["reference", "chunked"])
def test_layer_matches_the_design_equations_token_by_token(ops_cfg, reading):
    time_mix, meta, cfg = layer_pair(ops_cfg, **reading)
    x, v_first = inputs(cfg)
    out, meta_state = run_pair(time_mix, meta, x, v_first)
    expected, expected_state = explicit_meta_state(time_mix, meta, x, v_first)
    assert torch.allclose(out, expected, rtol=1e-9, atol=1e-10)
    assert torch.allclose(meta_state, expected_state, rtol=1e-9, atol=1e-10)


def test_gradcheck_in_float64_on_the_reference_backend():
    # Small enough for full finite differences over every input element (~200 of them).
    time_mix, meta, cfg = layer_pair(REFERENCE, d_model=16, head_size=4, lora_decay=4,
                                     lora_a=4, lora_value=4, lora_gate=4)
    x, v_first = inputs(cfg, B=1, T=3)
    g = torch.Generator().manual_seed(2)
    wkv, meta_state = (torch.randn(1, 4, 4, 4, generator=g, dtype=torch.float64) * 0.3
                       for _ in range(2))
    args = tuple(t.requires_grad_(True) for t in (x, v_first, wkv, meta_state))

    def layer(x, v_first, wkv, meta_state):
        return run_pair(time_mix, meta, x, v_first, {"wkv": wkv, "meta": meta_state})

    assert torch.autograd.gradcheck(layer, args, eps=1e-6, atol=1e-7, rtol=1e-6)
    # and with respect to the parameters that shape the transition and the read-out
    chosen = {"att.w0": time_mix.w0, "att.w2": time_mix.w2, "att.a0": time_mix.a0,
              "att.k_k": time_mix.k_k, "meta.x_m": meta.x_m, "meta.ln": meta.ln_out.weight}

    def layer_of_params(*values):
        named = dict(zip(chosen, values))
        tm = {n.split(".", 1)[1]: v for n, v in named.items() if n.startswith("att.")}
        ms = {"x_m": named["meta.x_m"], "ln_out.weight": named["meta.ln"]}
        detached = tuple(t.detach() for t in args)
        _, _, _, _, scan = torch.func.functional_call(time_mix, tm, (detached[0], detached[1],
                                                                    None, detached[2]))
        out, _, new_meta = torch.func.functional_call(
            meta, ms, (detached[0], scan, None, detached[3]))
        return out, new_meta

    values = tuple(p.detach().clone().requires_grad_(True) for p in chosen.values())
    assert torch.autograd.gradcheck(layer_of_params, values, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_chunked_gradients_equal_reference_gradients():
    grads = {}
    for name, ops_cfg in (("reference", REFERENCE), ("chunked", CHUNKED)):
        time_mix, meta, cfg = layer_pair(ops_cfg)
        x, v_first = inputs(cfg, T=37)
        x.requires_grad_(True)
        out, meta_state = run_pair(time_mix, meta, x, v_first)
        (out.square().sum() + meta_state.sum()).backward()
        params = list(time_mix.named_parameters()) + list(meta.named_parameters())
        grads[name] = {"x": x.grad, **{n: p.grad for n, p in params}}
    assert len(grads["reference"]) == len(grads["chunked"])
    for key, ref in grads["reference"].items():
        got = grads["chunked"][key]
        if ref is None:     # the TimeMix's own read-out (r, g, W_o, ln_x) is not used here
            assert got is None, key
            continue
        assert torch.allclose(got, ref, rtol=1e-8, atol=1e-10), key


@pytest.mark.parametrize("switch", [dict(sse="learned"), dict(z_norm="none"),
                                    dict(z_norm="rms"), dict(out_norm="full"),
                                    dict(d_state=128), dict(meta_shift=False),
                                    dict(meta_decay="own")])
def test_switches_build_and_keep_recurrent_parity(switch):
    time_mix, meta, cfg = layer_pair(CHUNKED, dtype=torch.float64, **switch)
    x, v_first = inputs(cfg, T=12)
    full, full_state = run_pair(time_mix, meta, x, v_first)
    state, pieces = {}, []
    for t0, t1 in ((0, 5), (5, 12)):
        _, _, att_shift, wkv, transition = time_mix(x[:, t0:t1], v_first[:, t0:t1],
                                                    state.get("att_shift"), state.get("wkv"))
        out, shift, meta_state = meta(x[:, t0:t1], transition, state.get("ffn_shift"),
                                      state.get("meta"))
        state = {"att_shift": att_shift, "wkv": wkv, "ffn_shift": shift, "meta": meta_state}
        pieces.append(out)
    assert torch.allclose(torch.cat(pieces, dim=1), full, rtol=1e-9, atol=1e-10)
    assert torch.allclose(state["meta"], full_state, rtol=1e-9, atol=1e-10)


def test_sse_modes_differ_and_learned_ignores_the_wkv_state():
    _, meta_state_sse, cfg = layer_pair(REFERENCE)
    time_mix, meta_learned, _ = layer_pair(REFERENCE, sse="learned")
    assert not hasattr(meta_state_sse, "sse_weight") and meta_learned.sse_weight.shape == (4, 16, 16)
    x, v_first = inputs(cfg, T=6)
    _, _, _, _, transition = time_mix(x, v_first)
    _, _, _, _, shifted = time_mix(x, v_first, None, torch.randn(2, 4, 16, 16, dtype=torch.float64))
    # learned SSE reads no WKV state, so the carried WKV state cannot reach its output
    assert torch.equal(meta_learned(x, transition)[0], meta_learned(x, shifted)[0])
    assert not torch.allclose(meta_state_sse(x, transition)[0], meta_state_sse(x, shifted)[0])


def test_fresh_layer_outputs_zero_and_has_per_head_norm():
    cfg = model_preset("metastate-tiny-wide")
    meta = MetaStateLayer(cfg, 0, CHUNKED)
    meta.init_weights()
    assert meta.input.weight.shape == (128, 64)         # W_in exists because C_s != C
    assert isinstance(meta.ln_out, torch.nn.GroupNorm) and meta.ln_out.num_groups == 8
    assert torch.count_nonzero(meta.output.weight) == 0
    no_input = MetaStateLayer(model_preset("metastate-tiny"), 0, CHUNKED)
    assert no_input.input is None


def test_meta_shift_off_reads_only_the_current_token():
    time_mix, meta, cfg = layer_pair(CHUNKED, meta_shift=False)
    assert meta.x_m is None
    x, v_first = inputs(cfg, T=6)
    _, _, _, _, scan = time_mix(x, v_first)
    with_shift_state = meta(x, scan, shift_state=torch.randn(2, cfg.d_model, dtype=torch.float64))
    # without the token shift, a carried previous token cannot change the output
    assert torch.equal(meta(x, scan)[0], with_shift_state[0])
    _, shifted_meta, _ = layer_pair(CHUNKED)
    assert not torch.equal(shifted_meta(x, scan)[0], shifted_meta(
        x, scan, shift_state=torch.randn(2, cfg.d_model, dtype=torch.float64))[0])


def test_own_decay_has_its_own_bias_and_changes_the_meta_state():
    time_mix, own, cfg = layer_pair(REFERENCE, meta_decay="own")
    _, shared, _ = layer_pair(REFERENCE, meta_decay="shared")
    assert own.w0.shape == (cfg.d_model,) and not hasattr(shared, "w0")
    x, v_first = inputs(cfg, T=7)
    _, _, _, _, scan = time_mix(x, v_first)
    out, _, meta_state = own(x, scan)
    assert out.shape == x.shape and meta_state.shape == (2, 4, 16, 16)
    # the meta-state decays by its own w0: moving w0 moves the state; the TimeMix's w does not
    with torch.no_grad():
        own.w0.add_(1.0)
    assert not torch.allclose(own(x, scan)[2], meta_state)
    out.square().sum().backward()
    assert own.w0.grad is not None and own.w0.grad.abs().sum() > 0


def test_new_readings_train_every_parameter_and_reject_bad_values():
    model = tiny_model("metastate-tiny", meta_shift=False, meta_decay="own")
    tokens = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    model(tokens[:, :-1], targets=tokens[:, 1:])[0].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == [] and not any("x_m" in n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="model.meta_decay must be one of shared | own, got 'both'"):
        validate_model_config(model_preset("metastate-tiny", meta_decay="both"))
    with pytest.raises(ValueError, match="model.meta_out_lr_mult must be > 0, got 0"):
        validate_model_config(model_preset("metastate-tiny", meta_out_lr_mult=0))
