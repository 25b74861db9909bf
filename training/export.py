"""Consolidate a (sharded) checkpoint into one safetensors file for evals, expansion and sharing."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from model import build_model
from training import safe_dcp
from training.checkpointing import CheckpointError, read_manifest, resolve_resume


def export_safetensors(checkpoint: str | Path, output: str | Path | None = None) -> Path:
    """Write the model weights of `checkpoint` (a step directory, its checkpoints/ folder or a run
    directory) as one safetensors file whose metadata holds the model config and the step.

    Example:
        >>> export_safetensors("runs/demo")      # -> runs/demo/checkpoints/step-00000300/model.safetensors
    """
    path = resolve_resume(str(checkpoint), Path(checkpoint))
    if path is None:
        raise CheckpointError(f"{checkpoint}: no complete checkpoint found")
    manifest = read_manifest(path)
    if manifest.get("format") != "dcp":
        raise CheckpointError(f"{path}: format {manifest.get('format')!r} cannot be exported here; "
                              "only FSDP2/DDP/single-process (dcp) checkpoints are supported")
    config = manifest["config"]
    model = build_model(config["model"], device=torch.device("meta"))
    state = {"model": {name: torch.empty_like(t, device="cpu") for name, t in model.state_dict().items()}}
    safe_dcp.load(state, path / "dcp")
    output = Path(output) if output else path / "model.safetensors"
    metadata = {"step": str(manifest["step"]), "model_config": json.dumps(config["model"]),
                "source": str(path.resolve())}
    tmp = output.with_name(output.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state["model"].items()}, str(tmp), metadata=metadata)
    tmp.replace(output)
    return output
