"""Load a model for evaluation from any checkpoint the stack writes: a sharded DCP or DeepSpeed
ZeRO checkpoint (step directory, its checkpoints/ folder or a run directory) or a consolidated
safetensors file from `metastate export`."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model import LanguageModel, build_model
from ops import OpsConfig
from training.checkpointing import CheckpointError


@dataclass
class LoadedCheckpoint:
    model: LanguageModel
    path: Path                         # the step directory or the safetensors file
    step: int
    config: dict = field(default_factory=dict)   # the run config (only `model` for safetensors)
    mlflow_run_id: str | None = None

    @property
    def run_dir(self) -> Path | None:
        """train.out_dir of the run that wrote a sharded checkpoint (None for safetensors)."""
        return self.path.parent.parent if self.path.is_dir() else None


def load_for_eval(checkpoint: str | Path, device: str | torch.device = "cpu",
                  ops_backend: str = "auto") -> LoadedCheckpoint:
    """The model of `checkpoint` in eval mode on `device`, with its step and run config.

    Example:
        >>> loaded = load_for_eval("runs/demo")          # or ".../model.safetensors"
        >>> logits, state = loaded.model(tokens)
    """
    source = Path(checkpoint)
    if source.suffix == ".safetensors":
        weights, config, step, run_id = _read_safetensors(source)
    else:
        from training.export import load_checkpoint_weights

        weights, manifest, source = load_checkpoint_weights(source)
        config, step, run_id = manifest["config"], int(manifest["step"]), manifest.get("mlflow_run_id")
    model = build_model(config["model"], OpsConfig(backend=ops_backend), device="meta")
    model.load_state_dict(weights, assign=True)
    model = model.to(device=device, dtype=torch.float32).eval()
    return LoadedCheckpoint(model, source, step, config, run_id)


def _read_safetensors(path: Path):
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; pass a safetensors file from `metastate export`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except SafetensorError as err:  # e.g. a pickle renamed .safetensors: never unpickled
        raise CheckpointError(f"{path}: not a safetensors file ({err}); pass the file "
                              "`metastate export` wrote, or a checkpoint directory") from None
    if "model_config" not in metadata:
        raise CheckpointError(f"{path} has no model_config metadata; it was not written by "
                              "`metastate export`: export the checkpoint again")
    config = {"model": json.loads(metadata["model_config"])}
    return load_file(str(path)), config, int(metadata.get("step", 0)), None
