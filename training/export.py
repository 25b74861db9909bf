"""Consolidate a (sharded) checkpoint into one safetensors file for evals, expansion and sharing."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from model import build_model
from training import safe_dcp
from training.checkpointing import CheckpointError, find_checkpoint, read_manifest
from training.deepspeed_files import consolidate_zero


def export_safetensors(checkpoint: str | Path, output: str | Path | None = None) -> Path:
    """Write the model weights of `checkpoint` (a step directory, its checkpoints/ folder or a run
    directory) as one safetensors file whose metadata holds the model config and the step.

    Example:
        >>> export_safetensors("runs/demo")      # -> runs/demo/checkpoints/step-00000300/model.safetensors
    """
    weights, manifest, path = load_checkpoint_weights(checkpoint)
    config = manifest["config"]
    model = build_model(config["model"], device=torch.device("meta"))
    output = Path(output) if output else path / "model.safetensors"
    metadata = {"step": str(manifest["step"]), "model_config": json.dumps(config["model"]),
                "source": str(path.resolve())}
    tmp = output.with_name(output.name + ".tmp")
    save_file({k: weights[k].contiguous() for k in model.state_dict()}, str(tmp), metadata=metadata)
    tmp.replace(output)
    return output


def load_checkpoint_weights(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """Full CPU weights of a DCP (FSDP2/DDP/single) or DeepSpeed ZeRO checkpoint, its manifest
    and the step directory; `checkpoint` is a step directory, its checkpoints/ folder or a run
    directory. The one loading path for export, evals and the lm-eval adapter.

    Example:
        >>> weights, manifest, path = load_checkpoint_weights("runs/demo")
    """
    path = find_checkpoint(checkpoint)
    manifest = read_manifest(path)
    model = build_model(manifest["config"]["model"], device=torch.device("meta"))
    if manifest.get("format") == "dcp":
        state = {"model": {name: torch.empty_like(t, device="cpu") for name, t in model.state_dict().items()}}
        safe_dcp.load(state, path / "dcp")
        weights = state["model"]
    elif manifest.get("format") == "deepspeed":
        weights = consolidate_zero(path)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint format {manifest.get('format')!r}")
    missing = sorted(set(model.state_dict()) - set(weights))
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks {missing[:3]} of its own model config")
    return weights, manifest, path
