"""RWKV-LM's optimizer recipe: decay only on 2-D `.weight` matrices, w0 at a multiple of lr."""

import pytest
import torch

from model import build_model, model_preset, parameter_groups


def groups_by_name(model, **kwargs):
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: (g, {names[id(p)] for p in g["params"]})
            for g in parameter_groups(model, **kwargs)}


def test_rwkv_groups_follow_the_official_recipe():
    model = build_model(model_preset("metastate-tiny-wide", sse="learned"), device="meta")
    groups = groups_by_name(model, weight_decay=0.1)
    decay_group, decayed = groups["decay"]
    w0_group, fast = groups["w0"]
    plain_group, plain = groups["no_decay"]
    assert decay_group["weight_decay"] == 0.1 and decay_group["lr_scale"] == 1.0
    assert w0_group["lr_scale"] == 2.0 and w0_group["weight_decay"] == 0.0
    assert plain_group["weight_decay"] == 0.0 and plain_group["lr_scale"] == 1.0
    assert fast == {f"blocks.{i}.att.w0" for i in range(2)}
    assert {"emb.weight", "head.weight", "blocks.1.att.receptance.weight",
            "blocks.1.att.output.weight", "blocks.0.meta.input.weight",
            "blocks.0.meta.output.weight"} <= decayed
    assert all(n.endswith(".weight") for n in decayed)
    # LoRA factors, mixes, per-channel vectors, norms and the 3-D learned SSE are not decayed
    assert {"blocks.1.att.w1", "blocks.1.att.g2", "blocks.1.att.x_r", "blocks.1.att.r_k",
            "blocks.1.att.ln_x.weight", "blocks.0.ln0.weight", "ln_out.weight",
            "blocks.0.meta.sse_weight", "blocks.0.meta.ln_out.weight"} <= plain
    every = {n for n, _ in model.named_parameters()}
    assert decayed | fast | plain == every and not (decayed & plain)


def test_zero_weight_decay_and_frozen_parameters():
    model = build_model(model_preset("rwkv7-tiny"))
    model.emb.weight.requires_grad_(False)
    groups = groups_by_name(model, weight_decay=0.0, w0_lr_mult=3.0)
    assert set(groups) == {"no_decay", "w0"} and groups["w0"][0]["lr_scale"] == 3.0
    assert "emb.weight" not in groups["no_decay"][1]
    with pytest.raises(ValueError, match="weight_decay=-1"):
        parameter_groups(model, weight_decay=-1)


def test_groups_drive_adamw_with_decay_only_where_asked():
    model = build_model(model_preset("transformer-tiny"))
    groups = parameter_groups(model, weight_decay=0.5)
    assert {g["name"] for g in groups} == {"no_decay", "decay"}      # no w0 in a transformer
    opt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.99), eps=1e-18)
    norm_before = model.ln_out.weight.detach().clone()
    head_before = model.head.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()        # zero gradients: only weight decay moves anything
    assert torch.equal(model.ln_out.weight, norm_before)
    assert torch.allclose(model.head.weight, head_before * (1 - 1e-2 * 0.5))


def test_meta_out_lr_mult_gives_w_oms_and_own_decay_bias_their_groups():
    default = groups_by_name(build_model(model_preset("metastate-tiny"), device="meta"),
                             weight_decay=0.1)
    assert set(default) == {"no_decay", "w0", "decay"}        # the default: RWKV-LM's groups
    model = build_model(model_preset("metastate-tiny", meta_out_lr_mult=0.25, meta_decay="own"),
                        device="meta")
    groups = groups_by_name(model, weight_decay=0.1)
    meta_group, meta_out = groups["meta_out"]
    assert meta_out == {f"blocks.{i}.meta.output.weight" for i in range(2)}
    assert meta_group["lr_scale"] == 0.25 and meta_group["weight_decay"] == 0.1
    assert not meta_out & groups["decay"][1]
    assert {f"blocks.{i}.meta.w0" for i in range(2)} <= groups["w0"][1]
