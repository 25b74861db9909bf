"""`metastate submit` (a SLURM job) and `metastate launch local` (torchrun on this machine)."""

import argparse
import os
import sys
import time
from pathlib import Path

from launch.preset_files import ConfigError
from launch.run_config import load_run_config, to_yaml
from launch.slurm import (
    check_before_start,
    log_dir,
    render_sbatch,
    shutdown_timeout_s,
    submit_script,
    world_size,
)

# torchrun's agent forwards these to its workers (SIGUSR1 is not in its default list), so a
# signal sent to the agent reaches the trainer's handler (training/preemption.py)
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
RESUME_AUTO = "train.resume=auto"


class _IntermixedParser(argparse.ArgumentParser):
    """Takes `key=value` overrides after options too (`submit demo --nodes 2 train.steps=5`);
    plain argparse stops collecting positionals at the first option."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register(subparsers: argparse._SubParsersAction) -> None:
    submit = subparsers.add_parser(
        "submit", help="submit a training run as a SLURM job (requeued on preemption)",
        description="Render an sbatch script (one torchrun per node through srun, rendezvous on the "
                    "first node, --requeue, SIGUSR1 before the time limit, train.resume=auto), check "
                    "the run, and submit it with sbatch. Prints the job id.",
        epilog="example: metastate submit configs/pile/metastate-150m.yaml --nodes 4 --gpus-per-node 8 "
               "--partition gpu --time 24:00:00 --dry-run  (recipes: docs/recipes.md)")
    submit.add_argument("config", metavar="CONFIG", help="preset name (demo) or YAML path")
    submit.add_argument("overrides", metavar="key=value", nargs="*", help="dotted overrides")
    flags = {"--nodes": ("nodes", int), "--gpus-per-node": ("gpus_per_node", int),
             "--partition": ("partition", str), "--time": ("time", str), "--account": ("account", str),
             "--qos": ("qos", str)}
    for flag, (key, kind) in flags.items():
        submit.add_argument(flag, dest=key, type=kind, default=None,
                            help=f"sets launch.{key} (default: the config's)")
    submit.add_argument("--dry-run", action="store_true",
                        help="print the script and the resolved config, check everything, submit nothing")
    submit.__class__ = _IntermixedParser
    submit.set_defaults(func=submit_command, launch_keys=[key for key, _ in flags.values()])

    launch = subparsers.add_parser("launch", help="start a training run without SLURM",
                                   description="Start a training run without a cluster scheduler.")
    targets = launch.add_subparsers(dest="launch_target", required=True)
    local = targets.add_parser(
        "local", help="torchrun on this machine",
        description="Check the run for N ranks, then exec torchrun --standalone with N processes "
                    "running `metastate train` (SIGUSR1/SIGTERM checkpoint and stop, exit code 75).",
        epilog="example: metastate launch local demo --nproc 2 train.micro_batch_size=4 "
               "parallel.backend=fsdp2  (the global batch must split into micro batch x ranks)")
    local.add_argument("config", metavar="CONFIG", help="preset name (demo) or YAML path")
    local.add_argument("overrides", metavar="key=value", nargs="*", help="dotted overrides")
    local.add_argument("--nproc", type=int, default=None,
                       help="processes (ranks) on this machine (default: launch.gpus_per_node)")
    local.__class__ = _IntermixedParser
    local.set_defaults(func=launch_local_command)
    targets.metavar = "{" + ",".join(targets.choices) + "}"


def submit_command(args: argparse.Namespace) -> int:
    """Example: `metastate submit demo --nodes 2 --gpus-per-node 2 --time 1:00:00 --dry-run
    train.micro_batch_size=2` (the global batch of 8 split over 4 ranks)."""
    for item in args.overrides:
        if item.startswith("train.resume=") and item != RESUME_AUTO:
            raise ConfigError(f"'{item}': a submitted job always resumes with {RESUME_AUTO} (a requeued job "
                              "must find its newest checkpoint); drop it, or point train.out_dir at the run "
                              "to continue")
    flags = [f"launch.{key}={getattr(args, key)}" for key in args.launch_keys
             if getattr(args, key) is not None]
    overrides = [*args.overrides, *flags, RESUME_AUTO]
    cfg = load_run_config(args.config, overrides)
    lc = cfg.launch
    check_before_start(cfg, world_size(lc), f"{lc.nodes} node(s) x {lc.gpus_per_node} per node")
    script = render_sbatch(cfg, args.config, overrides)
    if args.dry_run:
        print(script, end="" if script.endswith("\n") else "\n")
        print("# ---- resolved config ----")
        print(to_yaml(cfg), end="")
        print(f"dry run: checks passed for {world_size(lc)} ranks; nothing submitted", file=sys.stderr)
        return 0
    logs = log_dir(cfg, Path.cwd())
    job_id = submit_script(script, logs / f"submit-{time.strftime('%Y%m%d-%H%M%S')}.sbatch")
    print(job_id)
    print(f"submitted job {job_id}: logs {logs}/slurm-{job_id}.out, checkpoints "
          f"{Path(cfg.train.out_dir) / 'checkpoints'}", file=sys.stderr)
    return 0


def launch_local_command(args: argparse.Namespace) -> int:
    """Example: `metastate launch local demo --nproc 2 train.micro_batch_size=4`. Replaces this process
    with torchrun, so signals sent to it reach torchrun (and through it, every rank)."""
    cfg = load_run_config(args.config, args.overrides)
    nproc = args.nproc if args.nproc is not None else cfg.launch.gpus_per_node
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    check_before_start(cfg, nproc, f"--nproc {nproc}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               f"--signals-to-handle={FORWARDED_SIGNALS}", "-m", "launch.cli", "train", args.config,
               *args.overrides]
    env = {**os.environ, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(shutdown_timeout_s(cfg.launch))}
    sys.stdout.flush()
    os.execve(sys.executable, command, env)
