"""Checkpoint expansion (`metastate expand`): grow a trained checkpoint into a larger model
(DESIGN.md section 6) and write a normal checkpoint that `metastate train ... train.resume=DIR` continues.

The parent is a checkpoint directory (DCP from single/DDP/FSDP2 runs, or DeepSpeed ZeRO; any
world size) or a consolidated safetensors export. Weights grow function-preservingly
(model/expand.py). AdamW moments: each old entry keeps its moments (sliced into the grown tensor),
new entries start at zero; a grown tensor keeps its step count, a new layer's tensors start at
step 0. ZeRO moments are gathered from their partitions like the weights; a safetensors export
holds none, so every moment starts at zero there, and the lineage says so. The output directory
is a run directory:

    DIR/config.yaml                        the target run config (train.out_dir=DIR)
    DIR/checkpoints/step-<parent step>/    model + optimizer + data position + lineage

The lineage (parent path and sha256, parent step, config diff, freeze_old, which leading block of
each tensor is old) lives in the checkpoint's manifest; the continued run carries it into its own
checkpoints and tags its MLflow run with it (a new MLflow run: the grown model is another model).
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from data_pipeline.train_stream import build_train_stream
from model import build_model
from model.config import ModelConfig, coerce_model_config
from model.expand import ExpansionError, check_expansion, expand_state_dict, grow_tensor
from training.checkpointing import CheckpointError, CheckpointManager, find_checkpoint, read_manifest
from training.deepspeed_files import MOMENTS, consolidate_zero, zero_moments
from training.distributed import DistEnv
from training.optimizer import build_optimizer
from training.schedule import build_lr_scheduler, move_schedule_to
from training.stability import NonFiniteGuard
from training.tracking import flatten
from training.train_state import load_train_state, save_train_state

SINGLE_CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@dataclass
class Parent:
    """A trained model as loaded for expansion."""
    path: Path
    model_cfg: ModelConfig
    run_config: dict | None            # the full run config (None for a safetensors export)
    step: int
    weights: dict[str, torch.Tensor]
    moments: dict[str, dict[str, torch.Tensor]] | None   # name -> exp_avg, exp_avg_sq, step
    extras: dict | None                # rank 0's step / tokens_seen / data / guard state
    sha256: str
    mlflow_run_id: str | None = None


def content_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and bytes, sorted by name)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_parent(source: str | Path) -> Parent:
    """Load a checkpoint (step directory, checkpoints/ folder or run directory) or an export.

    Example: load_parent("runs/small").step
    """
    source = Path(source)
    if source.is_file():
        return _load_export(source)
    path = find_checkpoint(source)
    manifest = read_manifest(path)
    config = manifest["config"]
    model_cfg = coerce_model_config(config["model"])
    moments = None
    if manifest.get("format") == "dcp":
        model = build_model(model_cfg, device="meta")
        model.to_empty(device="cpu")
        optimizer = build_optimizer(model, OmegaConf.create(config["optim"]))
        with torch.random.fork_rng(devices=[]):  # loading the extras restores the saved RNG
            extras = load_train_state(path, model, optimizer, SINGLE_CPU)
        weights = {name: t.detach() for name, t in model.state_dict().items()}
        moments = {name: optimizer.state[param] for name, param in model.named_parameters()}
    elif manifest.get("format") == "deepspeed":
        weights = {name: t.detach() for name, t in consolidate_zero(path).items()}
        moments = zero_moments(path, weights)
        extras = torch.load(path / "rank0.pt", weights_only=True)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint format {manifest.get('format')!r}")
    return Parent(path, model_cfg, config, int(manifest["step"]), weights, moments, extras,
                  content_sha256(path), manifest.get("mlflow_run_id"))


def _load_export(path: Path) -> Parent:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            weights = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a safetensors export ({err}); pass a checkpoint "
                              "directory or the file `metastate export` wrote") from None
    if "model_config" not in metadata:
        raise CheckpointError(f"{path}: the safetensors file has no model_config metadata; "
                              "export it with `metastate export`")
    model_cfg = coerce_model_config(json.loads(metadata["model_config"]))
    return Parent(path, model_cfg, None, int(metadata.get("step", 0)), weights, None, None,
                  content_sha256(path))


def config_diff(parent: Parent, target: dict) -> dict[str, list]:
    """{dotted key: [parent value, target value]} for every key that differs (model keys only
    when the parent is an export, which carries no run config)."""
    before = flatten(parent.run_config) if parent.run_config is not None else \
        flatten({"model": dataclasses.asdict(parent.model_cfg)})
    after = flatten(target if parent.run_config is not None else {"model": target["model"]})
    return {key: [before.get(key), after.get(key)] for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)}


def grow_optimizer_state(optimizer, model, parent: Parent, old_shapes: dict) -> str:
    """Fill `optimizer.state` for every parameter of the grown `model`; returns how the parent's
    moments were treated (recorded in the lineage)."""
    for name, param in model.named_parameters():
        old = parent.moments.get(name) if parent.moments is not None else None
        state = {key: torch.zeros_like(param) for key in MOMENTS}
        state["step"] = torch.tensor(0.0)
        if name in old_shapes:
            state["step"] = torch.tensor(float(parent.step))
            if old is not None:
                state.update({key: grow_tensor(old[key], param.shape) for key in MOMENTS})
                state["step"] = old["step"].detach().clone().float()
        optimizer.state[param] = state
    if parent.moments is None:
        return ("reset: a safetensors export holds no AdamW moments, every moment starts at zero")
    return "kept: old entries keep their AdamW moments, new entries start at zero"


def refuse_existing_run(output: Path) -> None:
    """Expansion never overwrites a run: `output` must hold no checkpoints yet."""
    if (output / "checkpoints").exists() and any((output / "checkpoints").iterdir()):
        raise CheckpointError(f"--output {output} already holds checkpoints; pick a new directory "
                              "(expansion never overwrites a run)")


def grow_checkpoint(parent: Parent, cfg, output: str | Path, freeze_old: bool = False,
                    seed: int = 0) -> Path:
    """Grow `parent` into the model of the run config `cfg` (train.out_dir = `output`) and write
    DIR/checkpoints/step-N (N = the parent's step) plus DIR/config.yaml. Returns the checkpoint
    directory. launch/expansion.py builds `cfg` from the command line's --to and --config.

    Example:
        >>> grow_checkpoint(load_parent("runs/small"), cfg, "runs/grown", freeze_old=False)
        >>> # then: metastate train runs/grown/config.yaml train.steps=20000
    """
    output = Path(output)
    refuse_existing_run(output)
    check_expansion(parent.model_cfg, coerce_model_config(cfg.model))  # before anything is written
    output.mkdir(parents=True, exist_ok=True)
    path = write_grown_checkpoint(parent, cfg, output / "checkpoints", freeze_old=freeze_old, seed=seed)
    (output / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return path


def write_grown_checkpoint(parent: Parent, cfg, checkpoints: Path, freeze_old: bool = False,
                           seed: int = 0, freeze_old_steps: int = 0) -> Path:
    """Grow `parent` into the model of `cfg` and save it as checkpoints/step-N (N = the parent's
    step), atomically like every checkpoint: a save killed half-way leaves only a partial
    directory, which resume ignores and the next save replaces. `freeze_old_steps` > 0 limits
    --freeze-old to that many steps after N (a staged run's stage); 0 freezes for the whole run.

    Example: write_grown_checkpoint(load_parent("runs/x/stages/1"), cfg, Path("runs/x/checkpoints"))
    """
    check_expansion(parent.model_cfg, coerce_model_config(cfg.model))
    if freeze_old and cfg.parallel.backend != "none":
        raise ExpansionError(f"--freeze-old needs parallel.backend=none (single process or DDP), the "
                             f"target config has parallel.backend={cfg.parallel.backend}")
    weights, old_shapes = expand_state_dict(parent.weights, parent.model_cfg, cfg.model, seed)
    model = build_model(cfg.model, cfg.ops, device="meta")
    model.to_empty(device="cpu")
    model.load_state_dict(weights)
    optimizer = build_optimizer(model, cfg.optim)
    moments = grow_optimizer_state(optimizer, model, parent, old_shapes)
    scheduler = build_lr_scheduler(optimizer, cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.min_lr_ratio)
    move_schedule_to(scheduler, parent.step)
    extras = _continued_extras(parent, cfg)
    target = OmegaConf.to_container(cfg, resolve=True)
    lineage = {"parent_checkpoint": str(parent.path.resolve()), "parent_sha256": parent.sha256,
               "parent_step": parent.step, "parent_mlflow_run_id": parent.mlflow_run_id,
               "config_diff": config_diff(parent, target), "freeze_old": freeze_old, "seed": seed,
               "optimizer_moments": moments, "old_shapes": {k: list(v) for k, v in old_shapes.items()}}
    if freeze_old and freeze_old_steps > 0:
        lineage["freeze_old_steps"] = freeze_old_steps
    manifest = {"config": target, "tokens_seen": extras["tokens_seen"], "mlflow_run_id": None,
                "world_size": 1, "format": "dcp", "val_loss": None, "lineage": lineage}
    manager = CheckpointManager(Path(checkpoints), keep_last=0)
    with torch.random.fork_rng(devices=[]):
        # the continued run draws from the parent's RNG, not from whichever process grew it: a
        # staged run's in-process growth and a later `metastate expand` write the same checkpoint
        if parent.extras is not None and "rng" in parent.extras:
            torch.set_rng_state(parent.extras["rng"]["torch"])
        return manager.save(parent.step, lambda d: save_train_state(
            d, model, optimizer, {**extras, "scheduler": scheduler.state_dict()}, SINGLE_CPU), manifest)


def _continued_extras(parent: Parent, cfg) -> dict:
    """Step, tokens seen, data position and guard counters for the continued run: the parent's
    when it has them; for an export, its step and a data stream that starts from the beginning."""
    if parent.extras is not None:
        return {key: parent.extras[key] for key in ("step", "tokens_seen", "data", "guard")}
    stream = build_train_stream(cfg.data, 0, 1, cfg.train.micro_batch_size)
    return {"step": parent.step, "tokens_seen": 0, "data": stream.state_dict(),
            "guard": NonFiniteGuard(cfg.train.max_bad_steps).state_dict()}
