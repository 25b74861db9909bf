"""`metastate train CONFIG` for a config with `stages` (launch/stage_config.py): every stage in one
out_dir, the model grown at each boundary exactly as `metastate expand` grows it.

Layout (docs/training.md, "Staged runs"):

    OUT/config.yaml                  the staged run config (what `train.resume=auto` reruns)
    OUT/stages/<k>/checkpoints/      stage k's checkpoints, for every stage but the last
    OUT/stages/<k>/config.yaml       stage k's plain run config (k > 1: the one it was grown with)
    OUT/checkpoints/                 the last stage's: eval, export and generate on OUT take the
                                     final model; its first checkpoint is the grown one
    OUT/metrics.jsonl, OUT/mlflow.db one continuous log over all stages (steps are global)

A boundary is: stage k saves its checkpoint at its end step; the grown model is written as stage
k+1's first checkpoint (same step) atomically, like every checkpoint (a partial directory that a
kill leaves is ignored and replaced); stage k+1 resumes from it, with the lr re-warm, optimizer
carry-over and lineage of `metastate expand`. Where a run stands is read from the checkpoints
alone: the last stage holding one, or, when that one is the stage's end, the next stage, grown
first. So `train.resume=auto` lands in the right stage after a kill at any point.

MLflow: one run per stage, tagged `stage`, in the run's experiment. MLflow parameters are fixed
once logged and the grown model has other `model.*` parameters, so one run cannot hold both
stages; the metrics use global steps, so the stage runs side by side draw one continuous curve
and the boundary is where the next stage's run begins (as after `metastate expand`).
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from launch.run_config import RunConfig, load_run_config, stages_of
from launch.stage_config import Stage
from training.checkpointing import CheckpointError, find_latest, step_of

GROW_MODULE = "launch.stages"      # `python -m launch.stages STAGE_CONFIG PARENT ROOT ...`


def stage_checkpoints(out_dir: Path, stage: Stage, last: int) -> Path:
    """Where stage `stage` keeps its checkpoints (the last stage: OUT/checkpoints)."""
    if stage.number == last:
        return out_dir / "checkpoints"
    return out_dir / "stages" / str(stage.number) / "checkpoints"


def stage_run_config(cfg, stage: Stage):
    """The plain (stage-less) run config of one stage: the run's config with the stage's model.
    Stages after the first resume from their grown checkpoint (train.resume=auto)."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree["model"] = dict(stage.model)
    tree["stages"] = []
    if stage.number > 1:
        tree["train"]["resume"] = "auto"
    if not tree["tracking"]["run_name"]:
        tree["tracking"]["run_name"] = f"{Path(tree['train']['out_dir']).name}-stage{stage.number}"
    return OmegaConf.merge(OmegaConf.structured(RunConfig), tree)


def current_stage(cfg) -> tuple[list[Stage], int]:
    """The stages and the index of the one to run now, read from the checkpoints on disk."""
    stages = stages_of(cfg)
    out_dir = Path(cfg.train.out_dir)
    for index in reversed(range(len(stages))):
        latest = find_latest(stage_checkpoints(out_dir, stages[index], len(stages)))
        if latest is not None:
            if cfg.train.resume == "none":
                raise CheckpointError(
                    f"{latest.parent} already holds checkpoints up to {latest.name} from an earlier "
                    "run; pass train.resume=auto to continue it, or a new train.out_dir")
            done = step_of(latest) >= stages[index].end_step and index + 1 < len(stages)
            return stages, index + 1 if done else index
    return stages, 0


def config_to_check(cfg):
    """What preflight checks: a staged run's current stage (its model, its checkpoints), else
    `cfg` itself. Raises like `current_stage` for a fresh run over an earlier run's checkpoints."""
    if not cfg.stages:
        return cfg
    check_staged_resume(cfg)
    stages, index = current_stage(cfg)
    return stage_run_config(cfg, stages[index])


def check_staged_resume(cfg) -> None:
    """A staged run resumes with train.resume=auto (it picks the stage itself), not a path."""
    if cfg.stages and cfg.train.resume not in ("auto", "none"):
        raise ValueError(f"train.resume={cfg.train.resume}: a run with stages resumes with "
                         "train.resume=auto (it finds its stage from OUT's checkpoints)")


def grow_into(cfg, stages: list[Stage], index: int, env) -> None:
    """Write stage `index`'s first checkpoint (the previous stage's last, grown) unless it exists.
    Rank 0 grows; on several processes it does so in a child process, since loading the parent's
    DCP checkpoint alone inside the job's process group would wait for the other ranks."""
    out_dir, stage = Path(cfg.train.out_dir), stages[index]
    root = stage_checkpoints(out_dir, stage, len(stages))
    if env.is_rank0 and find_latest(root) is None:
        parent_root = stage_checkpoints(out_dir, stages[index - 1], len(stages))
        parent = find_latest(parent_root)
        if parent is None or step_of(parent) != stage.start_step:
            raise CheckpointError(f"stage {stage.number} grows from stage {stage.number - 1}'s "
                                  f"checkpoint at step {stage.start_step}, but {parent_root} holds "
                                  f"{parent.name if parent else 'none'}")
        stage_config = out_dir / "stages" / str(stage.number) / "config.yaml"
        stage_config.parent.mkdir(parents=True, exist_ok=True)
        stage_config.write_text(OmegaConf.to_yaml(stage_run_config(cfg, stage)))
        args = [str(stage_config), str(parent), str(root), str(stage.freeze_old_steps), str(stage.seed)]
        if env.world_size == 1:
            grow_stage(*args)
        else:
            grow_in_child_process(args)
    env.barrier()


def grow_in_child_process(args: list[str]) -> None:
    """Run `grow_stage(*args)` in a child process that cannot be stopped by SIGUSR1/SIGTERM.

    torchrun forwards those signals to each worker's whole process group, the child included, and
    their default action would kill it half-way (the job then fails instead of checkpointing).
    The parent records them (run_stages' handler between stages) and stops after stage k+1's first step, so
    the child finishes the growth with the signals blocked: a blocked mask is inherited across
    fork and exec, and while the parent blocks them too, a signal that arrives waits and reaches
    the parent's handler when the mask is restored. SIGKILL still ends both."""
    from training.preemption import REQUEUE_SIGNAL, STOP_SIGNAL

    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, (REQUEUE_SIGNAL, STOP_SIGNAL))
    try:
        child = subprocess.Popen([sys.executable, "-m", GROW_MODULE, *args], env=child_env)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    if child.wait() != 0:
        raise subprocess.CalledProcessError(child.returncode, child.args)


def grow_stage(stage_config: str, parent: str, root: str, freeze_old_steps: str, seed: str) -> Path:
    """Grow the checkpoint `parent` into the model of `stage_config`, saved under `root`."""
    from training.expand import load_parent, write_grown_checkpoint

    steps = int(freeze_old_steps)
    return write_grown_checkpoint(load_parent(parent), load_run_config(stage_config), Path(root),
                                  freeze_old=steps > 0, seed=int(seed), freeze_old_steps=steps)


def run_stages(cfg, env, layout, config_name: str):
    """Run the stages from where the checkpoints say the run stands; returns the last Trainer and
    its result (a stop request, or train.stop_after, ends the job inside a stage)."""
    from training.preemption import PreemptionHandler

    stages, index = current_stage(cfg)
    job_start = None
    # between stages (the growth may take minutes) SIGUSR1/SIGTERM are recorded here, not fatal;
    # each stage's Trainer installs its own on top, takes these over, and restores this one
    between = PreemptionHandler(env.all_reduce_sum).install()
    try:
        while True:
            stage = stages[index]
            if index > 0:
                grow_into(cfg, stages, index, env)
            trainer, result = _run_stage(cfg, env, layout, config_name, stages, stage, job_start, between)
            job_start = result["job_start"] if job_start is None else job_start
            between.take_over(trainer.preemption)
            if trainer.stop_request is not None or result["step"] < stage.end_step \
                    or index + 1 == len(stages):
                return trainer, result
            if (request := between.poll()) is not None:  # came in on the stage's last step
                trainer.stop_request = request           # the requeued job grows the model
                return trainer, result
            index += 1
    finally:
        between.close()


def _run_stage(cfg, env, layout, config_name: str, stages: list[Stage], stage: Stage,
               job_start: int | None, between):
    from training.trainer import Trainer

    out_dir = Path(cfg.train.out_dir)
    trainer = Trainer(stage_run_config(cfg, stage), env, config_name=config_name, layout=layout,
                      checkpoint_root=stage_checkpoints(out_dir, stage, len(stages)),
                      tags={"stage": str(stage.number), "stage.model": stage.model_source})
    trainer.preemption.take_over(between)  # a signal during the growth stops after the first step
    between.forget()
    if env.is_rank0:  # the Trainer wrote its stage's config; OUT keeps the whole run's
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    job_start = trainer.step if job_start is None else job_start
    until = stage.end_step
    if cfg.train.stop_after > 0:
        until = min(until, job_start + cfg.train.stop_after)
    return trainer, {**trainer.run(until_step=until), "job_start": job_start}


def describe_stages(cfg) -> str:
    """`metastate config show`'s stage listing: each stage resolved, as YAML comments."""
    lines = []
    for stage in stages_of(cfg):
        lines.append(f"# {stage.describe()}")
        fields = ", ".join(f"{k}={v}" for k, v in stage.model.items())
        lines.append(f"#   model: {fields}")
    return "\n".join(lines) + ("\n" if lines else "")


if __name__ == "__main__":  # rank 0's child process in grow_into
    print(grow_stage(*sys.argv[1:]))
    sys.exit(0)
