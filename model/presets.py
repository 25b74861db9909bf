"""Named model sizes: `<family>-<size>` for families metastate, rwkv7, transformer.

Sizes 150m/450m/900m/1.5b count every parameter (embedding and untied head included, vocab 50304)
and land within 5% of the name (tests/model/test_presets.py checks it). `metastate-450m` keeps
`metastate-150m`'s d_model and vocabulary and adds 2 layers and 36 state heads per layer, so the
expansion path (DESIGN.md section 6) can grow one into the other. `*-tiny` presets are for tests.
"""

import dataclasses
import difflib

from model.config import ModelConfig

_TINY = dict(vocab_size=256, n_layer=2, d_model=64, head_size=16,
             lora_decay=8, lora_a=8, lora_value=8, lora_gate=8)

PRESETS: dict[str, ModelConfig] = {
    # Meta-State: the Meta-State layer holds far fewer weights than an FFN, so matching sizes
    # takes more layers or state heads (C_s > C) than rwkv7 at the same width.
    "metastate-150m": ModelConfig("metastate", n_layer=22, d_model=768),
    "metastate-450m": ModelConfig("metastate", n_layer=24, d_model=768, d_state=3072),
    "metastate-900m": ModelConfig("metastate", n_layer=24, d_model=1536, d_state=3072),
    "metastate-1.5b": ModelConfig("metastate", n_layer=24, d_model=2048, d_state=4096),
    # RWKV-7 with ChannelMix (4C), RWKV-LM's layout.
    "rwkv7-150m": ModelConfig("rwkv7", n_layer=10, d_model=768),
    "rwkv7-450m": ModelConfig("rwkv7", n_layer=26, d_model=1024),
    "rwkv7-900m": ModelConfig("rwkv7", n_layer=25, d_model=1536),
    "rwkv7-1.5b": ModelConfig("rwkv7", n_layer=24, d_model=2048),
    # Llama-style transformer baseline (SwiGLU 8C/3 rounded up to a multiple of 64).
    "transformer-150m": ModelConfig("transformer", n_layer=10, d_model=768),
    "transformer-450m": ModelConfig("transformer", n_layer=27, d_model=1024),
    "transformer-900m": ModelConfig("transformer", n_layer=26, d_model=1536),
    "transformer-1.5b": ModelConfig("transformer", n_layer=25, d_model=2048),
    # CPU test sizes (about 80k-150k parameters).
    "metastate-tiny": ModelConfig("metastate", **_TINY),
    "metastate-tiny-wide": ModelConfig("metastate", d_state=128, **_TINY),
    "rwkv7-tiny": ModelConfig("rwkv7", **_TINY),
    "transformer-tiny": ModelConfig("transformer", **_TINY),
}


def preset_names() -> list[str]:
    """All preset names, e.g. ['metastate-1.5b', 'metastate-150m', ...]."""
    return sorted(PRESETS)


def model_preset(name: str, **overrides) -> ModelConfig:
    """A fresh copy of a named preset, optionally with fields replaced.

    Example: model_preset("metastate-150m", z_norm="rms").n_layer == 22
    """
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown model preset '{name}'{hint}; available: "
                         f"{', '.join(preset_names())}")
    return dataclasses.replace(PRESETS[name], **overrides)
