"""What a checkpoint holds and how it is written and read, for FSDP2/DDP/single-process runs.

Model and optimizer go through torch.distributed.checkpoint (DCP; loaded without arbitrary
unpickling, see safe_dcp.py): sharded on save, resharded on load, so a 2-rank FSDP2 checkpoint
resumes on 1 rank and the reverse. Everything else (step,
scheduler, non-finite counters, data stream position, RNG of every rank) is small and goes into
one `rank{r}.pt` per rank, read with `torch.load(weights_only=True)`: no arbitrary pickle.
DeepSpeed runs use DeepSpeed's own format instead (training/deepspeed_engine.py).
"""

import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from training import safe_dcp
from training.checkpointing import CheckpointError
from training.distributed import DistEnv


def rng_state(device: torch.device) -> dict:
    """Torch's generators: the only randomness the stack draws from (the data order is a pure
    function of its seed and position)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_rank_extras(directory: Path, extras: dict, env: DistEnv) -> None:
    """This rank's small state (plus its RNG) as `rank{r}.pt`."""
    torch.save({**extras, "rng": rng_state(env.device)}, directory / f"rank{env.rank}.pt")


def load_rank_extras(directory: Path, env: DistEnv) -> dict:
    """This rank's extras, restoring its RNG. A rank that did not exist in the saved run (the
    world grew) takes rank 0's extras and keeps its own RNG."""
    own = directory / f"rank{env.rank}.pt"
    path = own if own.exists() else directory / "rank0.pt"
    try:
        extras = torch.load(path, weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as err:
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path}: cannot be loaded ({type(err).__name__}: {reason}); it may be "
                              "damaged or not a checkpoint: pass an earlier checkpoint") from err
    if own.exists():
        set_rng_state(extras["rng"], env.device)
    return extras


def save_train_state(directory: Path, model, optimizer, extras: dict, env: DistEnv) -> None:
    """Write model + optimizer (DCP, all ranks) and this rank's extras into `directory`."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    safe_dcp.save({"model": model_sd, "optim": optim_sd}, directory / "dcp")
    save_rank_extras(directory, extras, env)


def load_train_state(directory: Path, model, optimizer, env: DistEnv) -> dict:
    """Load model + optimizer (resharding to this world size) and return this rank's extras."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    safe_dcp.load(state, directory / "dcp")
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return load_rank_extras(directory, env)
