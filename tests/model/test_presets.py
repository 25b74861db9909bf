"""Presets (sizes within 5% of their names), config errors, size/FLOP accounting, `model info`."""

import argparse
import json

import pytest
import torch

from launch.model_commands import register
from model import build_model, model_preset, model_size, preset_names
from model.config import coerce_model_config
from model.size import scan_flops_per_token

NAMED_SIZES = {"150m": 150e6, "450m": 450e6, "900m": 900e6, "1.5b": 1.5e9}
FAMILIES = ("metastate", "rwkv7", "transformer")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", NAMED_SIZES)
def test_named_presets_are_within_five_percent(family, size):
    cfg = model_preset(f"{family}-{size}")
    assert cfg.family == family and cfg.vocab_size == 50304
    total = model_size(cfg).total_params
    assert abs(total / NAMED_SIZES[size] - 1) <= 0.05, f"{family}-{size}: {total:,}"


def test_metastate_450m_grows_from_150m():
    small, large = model_preset("metastate-150m"), model_preset("metastate-450m")
    assert (large.d_model, large.vocab_size, large.head_size) == \
        (small.d_model, small.vocab_size, small.head_size)
    assert large.n_layer >= small.n_layer
    assert (large.d_state or large.d_model) >= (small.d_state or small.d_model)
    assert (large.n_layer, large.d_state or large.d_model) != (small.n_layer, small.d_model)


@pytest.mark.parametrize("name", ["metastate-tiny", "metastate-tiny-wide", "rwkv7-tiny",
                                  "transformer-tiny"])
def test_size_counts_the_built_model(name):
    cfg = model_preset(name)
    model = build_model(cfg)
    size = model_size(cfg)
    assert size.total_params == sum(p.numel() for p in model.parameters())
    assert size.non_embedding_params == size.total_params - 2 * cfg.vocab_size * cfg.d_model


def test_flops_are_rwkv_aware():
    rwkv = model_size(model_preset("rwkv7-150m"))
    cfg = model_preset("metastate-150m")
    meta = model_size(cfg)
    # scans: 9 N^2 per head per layer for the WKV; metastate adds the meta-state scan (9 N^2)
    # and the SSE read-out (2 N^2)
    assert rwkv.scan_flops == 10 * 12 * 9 * 64 * 64
    assert meta.scan_flops == 22 * 12 * 20 * 64 * 64
    assert scan_flops_per_token(model_preset("metastate-150m", sse="learned")) == 22 * 12 * 18 * 4096
    assert rwkv.attention_flops == 0 and rwkv.train_flops == 3 * rwkv.forward_flops
    # matmuls: 2 per weight of every matrix applied per token (all but the embedding lookup).
    # rwkv7-150m by hand: r/k/v/o 4C^2 + ChannelMix 8C^2 per layer, LoRA ranks 64 (w), 64 (a),
    # 128 (g) on every layer and 32 (v) from layer 1 on, and the head V x C.
    C = 768
    by_hand = 10 * 12 * C * C + 10 * 2 * C * (64 + 64 + 128) + 9 * 2 * C * 32 + 50304 * C
    assert rwkv.matmul_flops == 2 * by_hand
    assert meta.matmul_flops < 2 * meta.total_params
    short, long = (model_size(model_preset("transformer-150m"), seq_len=s) for s in (512, 4096))
    assert long.attention_flops > short.attention_flops > 0
    assert long.matmul_flops == short.matmul_flops


def test_unknown_preset_and_bad_head_size_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown model preset 'rwkv7-150M'.*did you mean "
                                         r"'rwkv7-150m'"):
        model_preset("rwkv7-150M")
    with pytest.raises(ValueError, match=r"model.d_state \(100\) must be a multiple of "
                                         r"model.head_size \(64\)"):
        build_model(model_preset("metastate-150m", d_state=100), device="meta")
    with pytest.raises(ValueError, match=r"model.d_model \(768\) must be a multiple of "
                                         r"model.head_size \(100\)"):
        model_size(model_preset("rwkv7-150m", head_size=100))
    with pytest.raises(ValueError, match=r"model.z_norm must be one of none \| l2 \| rms, got 'layer'"):
        build_model(model_preset("metastate-tiny", z_norm="layer"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) n_embd"):
        coerce_model_config({"family": "rwkv7", "n_embd": 768})


def test_run_config_section_builds_a_model():
    omegaconf = pytest.importorskip("omegaconf")
    section = omegaconf.OmegaConf.structured(model_preset("rwkv7-tiny"))
    model = build_model(section)
    assert model.cfg.d_model == 64 and model.blocks[0].att.r_k.shape == (4, 16)


def run_cli(argv, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_model_info_prints_sizes(capsys):
    code, out, _ = run_cli(["model", "info", "metastate-150m"], capsys)
    assert code == 0
    assert "layers 22" in out and "C 768" in out and "C_s 768" in out and "heads 12 x 64" in out
    assert f"{model_size(model_preset('metastate-150m')).total_params:,}" in out
    code, out, _ = run_cli(["model", "info", "rwkv7-450m", "--json"], capsys)
    info = json.loads(out)
    assert info["params_total"] == model_size(model_preset("rwkv7-450m")).total_params
    assert info["layers"] == 26 and info["d_state"] == info["d_model"] == 1024
    assert info["flops_per_token_train"] == 3 * info["flops_per_token_forward"]


def test_model_info_unknown_preset_exits_2(capsys):
    code, out, err = run_cli(["model", "info", "metastate-151m"], capsys)
    assert code == 2 and out == ""
    assert "unknown model preset 'metastate-151m'" in err and "metastate-150m" in err


def test_model_cli_is_wired_into_metastate_command(capsys):
    cli = pytest.importorskip("launch.cli")
    assert "launch.model_commands" in cli.COMMAND_MODULES
    assert cli.main(["model", "info", "transformer-tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "transformer"


def test_every_preset_builds_on_the_meta_device():
    for name in preset_names():
        model = build_model(model_preset(name), device="meta")
        assert next(model.parameters()).device == torch.device("meta")
