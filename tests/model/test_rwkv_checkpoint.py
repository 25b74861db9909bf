"""Export to / import from the official RWKV-7 `.pth` layout, and logits parity with the `rwkv`
pip package (RWKV_x070, CPU fp32) on exported random weights.

The rwkv package reads its switches (RWKV_V7_ON, RWKV_JIT_ON, RWKV_CUDA_ON) from the
environment at import and changes global torch settings, so it runs in a subprocess.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from model import export_rwkv7_checkpoint, import_rwkv7_checkpoint

from .conftest import CHUNKED

# fp32 everywhere, different summation orders (our chunked scan vs the package's step loop):
# logits of size ~3 agree to ~2e-6; a wrong key, transpose or eps is off by > 1e-2.
PARITY_ATOL = 1e-4

RWKV_PACKAGE_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
    import torch
    torch.set_num_threads(1)
    from rwkv.model import RWKV
    model = RWKV(model=sys.argv[1], strategy="cpu fp32")
    tokens = json.loads(sys.argv[2])
    logits, state = model.forward(tokens, None, full_output=True)
    last, _ = model.forward(tokens[-1:], model.forward(tokens[:-1], None)[1])
    print(json.dumps({"all": logits.tolist(), "stepped_last": last.tolist()}))
""")


def test_rwkv_package_gives_our_logits_on_exported_weights(make_tiny, tmp_path):
    pytest.importorskip("rwkv")
    model = make_tiny("rwkv7-tiny", n_layer=3)
    path = export_rwkv7_checkpoint(model, tmp_path / "tiny.pth")
    tokens = [5, 17, 200, 3, 99, 42, 7, 7, 0, 255]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = subprocess.run([sys.executable, "-c", RWKV_PACKAGE_SCRIPT, str(path.with_suffix("")),
                          json.dumps(tokens)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    ours, _ = model(torch.tensor([tokens]))
    assert (torch.tensor(theirs["all"]) - ours[0]).abs().max() < PARITY_ATOL
    assert (torch.tensor(theirs["stepped_last"]) - ours[0, -1]).abs().max() < PARITY_ATOL


def test_export_layout_matches_rwkv_lm(make_tiny, tmp_path):
    model = make_tiny("rwkv7-tiny")
    weights = torch.load(export_rwkv7_checkpoint(model, tmp_path / "m.pth"), weights_only=True)
    C, H, N = 64, 4, 16
    assert weights["emb.weight"].shape == (256, C) and weights["head.weight"].shape == (256, C)
    assert weights["blocks.0.att.x_r"].shape == (1, 1, C)
    assert weights["blocks.1.att.w0"].shape == (1, 1, C)
    assert weights["blocks.1.att.r_k"].shape == (H, N)
    assert weights["blocks.1.att.w1"].shape == (C, 8) and weights["blocks.1.att.w2"].shape == (8, C)
    assert weights["blocks.1.ffn.x_k"].shape == (1, 1, C)
    assert weights["blocks.1.ffn.key.weight"].shape == (4 * C, C)
    # RWKV-LM allocates layer 0's value-residual parameters even though it never uses them
    assert {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2", "blocks.0.ln0.weight",
            "ln_out.bias"} <= set(weights)
    assert "blocks.1.ln0.weight" not in weights
    bf16 = torch.load(export_rwkv7_checkpoint(model, tmp_path / "b.pth", dtype=torch.bfloat16),
                      weights_only=True)
    assert all(t.dtype == torch.bfloat16 for t in bf16.values())


def test_import_round_trip_reproduces_the_model(make_tiny, make_tokens, tmp_path):
    model = make_tiny("rwkv7-tiny", n_layer=3, ffn_dim=96)
    restored = import_rwkv7_checkpoint(export_rwkv7_checkpoint(model, tmp_path / "m.pth"), CHUNKED)
    assert restored.cfg == model.cfg
    tokens = make_tokens(model, batch=2, length=9)
    assert torch.equal(restored(tokens)[0], model(tokens)[0])


def test_export_and_import_errors(make_tiny, tmp_path):
    with pytest.raises(ValueError, match="only the rwkv7 family.*'metastate'"):
        export_rwkv7_checkpoint(make_tiny("metastate-tiny"), tmp_path / "m.pth")
    with pytest.raises(ValueError, match="needs d_state == d_model"):
        export_rwkv7_checkpoint(make_tiny("rwkv7-tiny", d_state=128), tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"must end in \.pth"):
        export_rwkv7_checkpoint(make_tiny("rwkv7-tiny"), tmp_path / "m.pt")
    path = export_rwkv7_checkpoint(make_tiny("rwkv7-tiny"), tmp_path / "m.pth")
    weights = torch.load(path, weights_only=True)
    weights["blocks.1.ffn.s_emb.weight"] = torch.zeros(3, 3)
    torch.save(weights, tmp_path / "deep.pth")
    with pytest.raises(ValueError, match="'blocks.1.ffn.s_emb.weight' has no place"):
        import_rwkv7_checkpoint(tmp_path / "deep.pth")
    del weights["blocks.1.ffn.s_emb.weight"], weights["blocks.1.att.k_a"]
    torch.save(weights, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="lacks blocks.1.att.k_a"):
        import_rwkv7_checkpoint(tmp_path / "short.pth")
