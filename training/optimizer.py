"""The optimizer every engine (and checkpoint expansion) builds: AdamW over the official RWKV
parameter groups."""

import torch

from model import parameter_groups


def build_optimizer(model: torch.nn.Module, optim_cfg) -> torch.optim.AdamW:
    """AdamW over the official RWKV parameter groups (decay on 2-D weights, w0 at 2x lr).

    Example: build_optimizer(model, cfg.optim).param_groups[0]["lr"] == cfg.optim.lr * its lr_scale
    """
    groups = parameter_groups(model, optim_cfg.weight_decay, optim_cfg.w0_lr_mult)
    for group in groups:
        group["lr"] = optim_cfg.lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)
