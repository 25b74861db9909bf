"""What a run continued from an expanded checkpoint (`metastate expand`) carries: its lineage as
MLflow tags, and `FreezeOld`, the `--freeze-old` mode in which only the new entries train."""

import json

import torch

from model.expand import leading_block

_MAX_TAG_CHARS = 5000  # MLflow caps tag values; a long config diff is cut, the checkpoint keeps it all


def lineage_tags(lineage: dict | None) -> dict[str, str]:
    """MLflow tags for a run that descends from an expanded checkpoint (none for other runs).

    Example: lineage_tags({"parent_step": 300, ...})["lineage.parent_step"] == "300"
    """
    if not lineage:
        return {}
    tags = {}
    for key, value in lineage.items():
        if key == "old_shapes":
            continue  # per-tensor bookkeeping for FreezeOld, kept in the checkpoint only
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        tags[f"lineage.{key}"] = text[:_MAX_TAG_CHARS]
    return tags


class FreezeOld:
    """Keeps the parent's entries of every grown tensor bit-identical while the new ones train.

    Zeroing their gradients is not enough: AdamW still moves an entry with a zero gradient through
    its old moments and through weight decay. So their gradients are zeroed before the optimizer
    step (the clip norm then counts only trainable entries) and their values are restored from a
    snapshot after it. Needs plain (not sharded) parameters: parallel.backend=none.

    Example:
        >>> freeze = FreezeOld(model, manifest["lineage"]["old_shapes"])
        >>> freeze.mask_grads(); optimizer.step(); freeze.restore()
    """

    def __init__(self, model: torch.nn.Module, old_shapes: dict[str, list[int]]):
        params = dict(model.named_parameters())
        missing = sorted(set(old_shapes) - set(params))
        if missing:
            raise ValueError(f"freeze_old: the model has no parameter {missing[0]} that the "
                             "checkpoint's lineage lists; resume with the expanded model's config")
        self.frozen = []
        for name, shape in old_shapes.items():
            block = leading_block(shape)
            param = params[name]
            self.frozen.append((param, block, param.detach()[block].clone()))

    def mask_grads(self) -> None:
        for param, block, _ in self.frozen:
            if param.grad is not None:
                param.grad[block] = 0

    @torch.no_grad()
    def restore(self) -> None:
        for param, block, snapshot in self.frozen:
            param[block] = snapshot
