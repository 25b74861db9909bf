"""Progressive state expansion (DESIGN.md section 6): grow a trained recurrent model's layers and
state heads so that the grown model computes the same function.

Every parent tensor lands in the leading block of the grown tensor of the same name: new state
heads append rows/columns after the old ones (per-head vectors, W_r/W_k/W_v rows, LoRA second
matrices' columns, ln_x and LN_head entries), new layers append after the old ones (never before
layer 0, which owns v_first). New entries take the official init of a freshly built target model,
except the new columns of W_o (`att.output`) and W_oms (`meta.output`), which are zero: the paper's
[W_oms, W_new] with W_new = 0. Old heads therefore see the same inputs and transitions, so their
states evolve identically, and the new ones add exactly zero to the residual stream.

When the state width C_s grows past C, the Meta-State layer gains W_in: [I; fresh rows], so the old
heads' input u_t = x'_t is unchanged.
"""

import torch

from model.config import ModelConfig, coerce_model_config
from model.expansion_rules import ExpansionError, check_expansion, describe
from model.language_model import build_model

__all__ = ["ExpansionError", "check_expansion", "describe", "expand_model", "expand_state_dict",
           "grow_tensor", "leading_block"]

ZERO_COLUMN_SUFFIXES = ("att.output.weight", "meta.output.weight")   # W_o and W_oms
W_IN = "meta.input.weight"


def leading_block(shape) -> tuple[slice, ...]:
    """The index of a parent tensor of `shape` inside its grown tensor."""
    return tuple(slice(0, size) for size in shape)


def grow_tensor(old: torch.Tensor, shape, fill: torch.Tensor | None = None) -> torch.Tensor:
    """A tensor of `shape` holding `old` in its leading block and `fill` (default zeros) elsewhere.

    Example: grow_tensor(torch.ones(2), (3,)).tolist() == [1.0, 1.0, 0.0]
    """
    shape = tuple(shape)
    if old.dim() != len(shape) or any(a > b for a, b in zip(old.shape, shape)):
        raise ExpansionError(f"cannot grow a tensor of shape {tuple(old.shape)} into {shape}")
    grown = (fill.detach().clone() if fill is not None
             else torch.zeros(shape, dtype=old.dtype, device=old.device))
    grown[leading_block(old.shape)] = old.to(grown.dtype)
    return grown


def expand_state_dict(parent_weights: dict[str, torch.Tensor], parent_cfg, target_cfg,
                      seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    """Grow `parent_weights` (a parent model's state dict) into the target model's.

    Returns (weights, old_shapes): old_shapes maps every target tensor that holds parent entries
    to the shape of the leading block they occupy (W_in, when introduced, counts its identity
    block as old); tensors absent from it are wholly new. New entries come from the official
    init of a target model built with torch seed `seed`.

    Example:
        >>> weights, old = expand_state_dict(small.state_dict(), "metastate-tiny" cfg, wide cfg)
    """
    parent_cfg, target_cfg = check_expansion(parent_cfg, target_cfg)
    fresh = _fresh_blocks(target_cfg, seed)
    unexpected = sorted(set(parent_weights) - set(fresh))
    if unexpected:
        raise ExpansionError(f"the parent weights hold {unexpected[:3]}, which a "
                             f"{describe(target_cfg)} model lacks; pass the parent's own weights")
    weights, old_shapes = {}, {}
    for name, init in fresh.items():
        if name in parent_weights:
            old = parent_weights[name]
            fill = torch.zeros_like(init) if name.endswith(ZERO_COLUMN_SUFFIXES) else init
            weights[name] = grow_tensor(old, init.shape, fill)
            old_shapes[name] = tuple(old.shape)
        elif name.endswith(W_IN) and _layer(name) < parent_cfg.n_layer:
            # the parent fed x' straight into its C_s = C heads: W_in's first C rows are I
            C = target_cfg.d_model
            weights[name] = grow_tensor(torch.eye(C, dtype=init.dtype), init.shape, init)
            old_shapes[name] = (C, C)
        elif _layer(name) >= parent_cfg.n_layer:
            weights[name] = init.clone()   # a new layer: official init, W_o = W_oms = 0
        else:
            raise ExpansionError(f"the parent weights lack {name}; pass a complete "
                                 f"{describe(parent_cfg)} state dict")
    return weights, old_shapes


def _fresh_blocks(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """A target model's state dict whose blocks carry the official init (torch seed `seed`).
    Embedding, final norm and head never grow (C and vocab are fixed): they are copied from the
    parent, so they are left uninitialised here (the head's orthogonal init of a V x C matrix
    would be the slowest part of the whole expansion)."""
    model = build_model(cfg, device="meta")
    model.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for block in model.blocks:
            block.init_weights()
    return model.state_dict()


def _layer(name: str) -> int:
    """The block index of a parameter name (`blocks.3.att.w0` -> 3); -1 outside the blocks."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blocks" else -1


def expand_model(parent: torch.nn.Module, target_cfg, seed: int = 0, ops_cfg=None):
    """A grown copy of a built parent LanguageModel (the parent is left untouched).

    Example:
        >>> big = expand_model(small, model_preset("metastate-tiny-wide"), seed=0)
    """
    target_cfg = coerce_model_config(target_cfg)
    weights, _ = expand_state_dict(parent.state_dict(), parent.cfg, target_cfg, seed)
    model = build_model(target_cfg, ops_cfg or parent.ops_cfg, device="meta")
    model.to_empty(device="cpu")
    model.load_state_dict(weights)
    return model
