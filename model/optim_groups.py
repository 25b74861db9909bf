"""Optimizer parameter groups of RWKV-LM's recipe (configure_optimizers in train_temp)."""

from torch import nn


def is_decay_bias(name: str) -> bool:
    """A decay bias w0 (the TimeMix's, or the meta-state's own with model.meta_decay=own),
    which trains at a multiple of the learning rate."""
    return name.endswith(("att.w0", "meta.w0"))


def is_meta_output(name: str) -> bool:
    """W_oms, the Meta-State layer's output matrix (its lr multiple is model.meta_out_lr_mult)."""
    return name.endswith("meta.output.weight")


def is_weight_decayed(name: str, shape) -> bool:
    """Weight decay applies only to `.weight` tensors with >= 2 non-unit dimensions: the
    projection matrices, embedding and head; never norms, mixes, LoRA factors or w0."""
    return ".weight" in name and sum(size > 1 for size in shape) >= 2


def parameter_groups(model: nn.Module, weight_decay: float, w0_lr_mult: float = 2.0) -> list:
    """AdamW parameter groups: 2-D `.weight` matrices with weight decay; w0 at `w0_lr_mult` x lr
    without decay; everything else at 1x lr without decay. When the model's config sets
    `meta_out_lr_mult` != 1, W_oms gets a group of its own ("meta_out": decayed, at that multiple
    of lr); with the default the groups are exactly RWKV-LM's. Each group carries `lr_scale` (the
    trainer sets group["lr"] = lr * group["lr_scale"]) and a `name`. Frozen parameters are left
    out; empty groups are dropped.

    Example:
        >>> groups = parameter_groups(model, weight_decay=0.1)
        >>> opt = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.99), eps=1e-18)
    """
    if weight_decay < 0:
        raise ValueError(f"parameter_groups: weight_decay={weight_decay} must be >= 0")
    if w0_lr_mult <= 0:
        raise ValueError(f"parameter_groups: w0_lr_mult={w0_lr_mult} must be positive")
    meta_out_lr_mult = getattr(getattr(model, "cfg", None), "meta_out_lr_mult", 1.0)
    plain, fast, decayed, meta_out = [], [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if meta_out_lr_mult != 1.0 and is_meta_output(name):
            meta_out.append(param)
        elif is_decay_bias(name):
            fast.append(param)
        elif weight_decay > 0 and is_weight_decayed(name, param.shape):
            decayed.append(param)
        else:
            plain.append(param)
    groups = [
        {"name": "no_decay", "params": plain, "weight_decay": 0.0, "lr_scale": 1.0},
        {"name": "w0", "params": fast, "weight_decay": 0.0, "lr_scale": w0_lr_mult},
        {"name": "decay", "params": decayed, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"name": "meta_out", "params": meta_out, "weight_decay": weight_decay,
         "lr_scale": meta_out_lr_mult},
    ]
    return [group for group in groups if group["params"]]
