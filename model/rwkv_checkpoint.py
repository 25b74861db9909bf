"""Export the rwkv7 family to RWKV-7's official `.pth` layout, and import from it.

The layout is the state dict of RWKV-LM's `RWKV-v7/train_temp` model, which the `rwkv` pip
package's `RWKV_x070` also loads: `emb.weight`, `blocks.N.{ln0,ln1,ln2}.*`, `blocks.N.att.*`,
`blocks.N.ffn.*`, `ln_out.*`, `head.weight`. Our module names already follow it; the differences
are shapes (RWKV-LM keeps per-channel vectors as [1, 1, C]) and layer 0's value-residual LoRA,
which RWKV-LM allocates but never uses (layer 0's v *is* v_first) and we do not allocate.
"""

from pathlib import Path

import torch

from model.config import ModelConfig, lora_rank
from model.init import linear_and_zigzag
from model.language_model import LanguageModel, build_model
from ops import OpsConfig

VECTOR_KEYS = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a")
LAYER0_UNUSED = ("v0", "v1", "v2")


def _official_vector(name: str) -> bool:
    parts = name.split(".")
    return (len(parts) == 4 and parts[2] == "att" and parts[3] in VECTOR_KEYS) or \
        name.endswith(".ffn.x_k")


def export_rwkv7_checkpoint(model: LanguageModel, path: str | Path,
                            dtype: torch.dtype | None = None) -> Path:
    """Write an rwkv7-family model as an official RWKV-7 `.pth` file; returns the path.

    Example:
        >>> export_rwkv7_checkpoint(model, "out/rwkv7-150m.pth", dtype=torch.bfloat16)
        # then: rwkv.model.RWKV(model="out/rwkv7-150m", strategy="cpu fp32")
    """
    cfg = model.cfg
    if cfg.family != "rwkv7":
        raise ValueError(f"export: only the rwkv7 family has an official RWKV-7 layout; this "
                         f"model is family '{cfg.family}'")
    if cfg.d_state not in (0, cfg.d_model):
        raise ValueError(f"export: the official layout needs d_state == d_model (the rwkv "
                         f"package sizes its state by d_model); got d_state={cfg.d_state}, "
                         f"d_model={cfg.d_model}")
    path = Path(path)
    if path.suffix != ".pth":
        raise ValueError(f"export: '{path}' must end in .pth (the rwkv package appends .pth "
                         f"to the model name it is given)")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if _official_vector(name):
            tensor = tensor.reshape(1, 1, -1)
        out[name] = tensor
    att0 = model.blocks[0].att
    C, D_v = cfg.d_model, lora_rank(cfg, "value")
    linear, _ = linear_and_zigzag(C, cfg.head_size)
    # RWKV-LM's load_state_dict expects these; neither RWKV-LM nor the rwkv package reads them.
    out["blocks.0.att.v0"] = (0.73 - linear * 0.4).float().reshape(1, 1, C)
    out["blocks.0.att.v1"] = torch.zeros(C, D_v)
    out["blocks.0.att.v2"] = torch.zeros(D_v, C)
    ref_dtype = att0.receptance.weight.dtype
    out = {k: v.to(dtype or ref_dtype).contiguous() for k, v in out.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return path


def rwkv7_config_from_checkpoint(weights: dict[str, torch.Tensor]) -> ModelConfig:
    """The ModelConfig an official RWKV-7 state dict implies (sizes read from tensor shapes)."""
    for key in ("emb.weight", "blocks.0.att.r_k", "blocks.0.ffn.key.weight"):
        if key not in weights:
            raise ValueError(f"import: '{key}' is missing; this is not an RWKV-7 checkpoint")
    vocab_size, d_model = weights["emb.weight"].shape
    n_head, head_size = weights["blocks.0.att.r_k"].shape
    n_layer = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
    cfg = ModelConfig(family="rwkv7", vocab_size=vocab_size, n_layer=n_layer, d_model=d_model,
                      head_size=head_size,
                      ffn_dim=weights["blocks.0.ffn.key.weight"].shape[0])
    if n_head * head_size != d_model:
        raise ValueError(f"import: r_k is [{n_head}, {head_size}] but d_model is {d_model}; "
                         f"only checkpoints with dim_att == n_embd are supported")
    ranks = {"decay": "w1", "a": "a1", "value": "v1", "gate": "g1"}
    fields = {"decay": "lora_decay", "a": "lora_a", "value": "lora_value", "gate": "lora_gate"}
    layer = "blocks.1.att." if n_layer > 1 else "blocks.0.att."
    for which, key in ranks.items():
        if layer + key not in weights:
            continue
        rank = weights[layer + key].shape[1]
        if rank != lora_rank(cfg, which):
            setattr(cfg, fields[which], rank)
    if cfg.ffn_dim == 4 * d_model:
        cfg.ffn_dim = 0
    return cfg


def import_rwkv7_checkpoint(path: str | Path, ops_cfg: OpsConfig | None = None,
                            dtype: torch.dtype = torch.float32) -> LanguageModel:
    """Load an official RWKV-7 `.pth` (RWKV-LM or rwkv-package format) as an rwkv7 model.

    Example: model = import_rwkv7_checkpoint("RWKV-x070-Pile-168M.pth")
    """
    weights = torch.load(Path(path), map_location="cpu", weights_only=True)
    cfg = rwkv7_config_from_checkpoint(weights)
    model = build_model(cfg, ops_cfg, device="meta")
    expected = model.state_dict()
    ours: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if name.startswith("blocks.0.att.") and name.split(".")[-1] in LAYER0_UNUSED:
            continue
        if name not in expected:
            raise ValueError(f"import: checkpoint key '{name}' has no place in a plain RWKV-7 "
                             f"model (variants such as DeepEmbed are not supported)")
        ours[name] = tensor.reshape(expected[name].shape).to(dtype)
    missing = sorted(set(expected) - set(ours))
    if missing:
        raise ValueError(f"import: checkpoint lacks {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}")
    model = model.to_empty(device="cpu").to(dtype)
    model.load_state_dict(ours, strict=True)
    return model
