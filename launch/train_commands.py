"""`metastate train`, `metastate export` and `metastate expand`: the commands that assemble a run
from a config and hand it to the training library (training/)."""

import argparse
import logging
import os
import sys
from pathlib import Path

from data_pipeline.stats import DataError
from launch.run_config import load_run_config
from launch.stages import config_to_check
from training.checkpointing import CheckpointError
from training.layout import plan_layout
from training.preflight import preflight
from training.run_lock import RunLock


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train a model (run directly, or under torchrun for several processes)",
        description="Train any model family on any data source. Several processes: "
                    "torchrun --nproc-per-node N -m launch.cli train CONFIG ...",
        epilog="example: metastate train demo train.steps=50")
    train.add_argument("config", metavar="CONFIG", help="preset name (demo) or YAML path")
    train.add_argument("overrides", metavar="key=value", nargs="*", help="dotted overrides")
    train.set_defaults(func=train_command)

    export = subparsers.add_parser(
        "export", help="consolidate a checkpoint into one safetensors file",
        epilog="example: metastate export runs/demo --format safetensors")
    export.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a step-NNNNNNNN directory, its checkpoints/ folder or a run directory")
    export.add_argument("--format", choices=["safetensors"], default="safetensors")
    export.add_argument("--output", default=None, help="output file (default: inside the checkpoint)")
    export.set_defaults(func=export_command)

    expand = subparsers.add_parser(
        "expand", help="grow a trained checkpoint into a larger model with the same function",
        description="Progressive state expansion: new layers and state heads with official init "
                    "and zero output projections; writes a checkpoint that `metastate train "
                    "DIR/config.yaml` (or any config with the target model and train.resume=DIR) "
                    "continues.",
        epilog="example: metastate expand runs/small --to metastate-450m --output runs/grown")
    expand.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a step-NNNNNNNN directory, its checkpoints/ folder, a run directory "
                             "or a safetensors export")
    expand.add_argument("--to", required=True, metavar="PRESET_OR_CONFIG",
                        help="a model preset (metastate-450m) or a run config (preset name or YAML)")
    expand.add_argument("--output", required=True, metavar="DIR", help="new run directory")
    expand.add_argument("--config", default=None, metavar="RUN_CONFIG",
                        help="run config around a model preset --to (default: the parent's own)")
    expand.add_argument("--freeze-old", action="store_true",
                        help="train only the new entries; the parent's stay bit-identical")
    expand.add_argument("--seed", type=int, default=0, help="seed of the new entries' init")
    expand.set_defaults(func=expand_command)


def train_command(args: argparse.Namespace) -> int:
    """Example: `metastate train demo train.steps=50 model.n_layer=4`."""
    cfg = load_run_config(args.config, args.overrides)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        # this process's layout: planned once here, its mesh built once the process group exists
        layout = plan_layout(cfg.parallel, world_size, int(os.environ.get("RANK", "0")))
        preflight(config_to_check(cfg), layout)  # a staged run: the stage that runs now
        RunLock(Path(cfg.train.out_dir)).check()  # rank 0 takes the lock in Trainer
    except (ValueError, DataError, CheckpointError) as err:
        print(f"train: {err}", file=sys.stderr)
        return 2
    from training.distributed import init_distributed, shutdown_distributed
    from training.exit_watchdog import arm_exit_watchdog
    from training.preemption import PREEMPTED_EXIT_CODE, requeue_slurm_job
    from training.stability import TrainingDiverged
    from training.trainer import Trainer

    env = init_distributed()
    logging.basicConfig(level=logging.INFO if env.is_rank0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        if cfg.stages:
            from launch.stages import run_stages

            trainer, result = run_stages(cfg, env, layout.with_mesh(env.device.type), Path(args.config).stem)
        else:
            trainer = Trainer(cfg, env, config_name=Path(args.config).stem,
                              layout=layout.with_mesh(env.device.type))
            result = trainer.run()
        request = trainer.stop_request
        if request is not None and env.is_rank0:
            # before the barrier: once a peer exits, srun may kill this node's processes; every
            # rank's part of the checkpoint is on disk once save_checkpoint has returned
            def report(outcome: str) -> None:
                print(f"train: stopped at step {result['step']} on {request.signal_name} with a "
                      f"checkpoint; {outcome}", file=sys.stderr, flush=True)

            if request.requeue:
                requeue_slurm_job(report)
            else:
                report("not requeued (SIGTERM means stop)")
        # No rank tears the process group down while a peer is still inside a collective (a
        # gloo peer vanishing mid-operation aborts the other process).
        env.barrier()
        if args.as_program:  # the run is done: a hang from here on must not hold the job
            arm_exit_watchdog(PREEMPTED_EXIT_CODE if request is not None else 0)
    except TrainingDiverged as err:
        print(f"train: {err}", file=sys.stderr)
        return 3
    finally:
        shutdown_distributed()
    if request is not None:
        return PREEMPTED_EXIT_CODE
    if env.is_rank0:
        if result.get("val_loss") is not None:
            from training.validation import final_validation_line

            print(final_validation_line(result["val_loss"], result["step"], cfg, layout.dp_size))
        print(f"checkpoints: {trainer.checkpoint_root}")
        print(f"metrics: {trainer.how_to_view()}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    """Example: `metastate export runs/demo --format safetensors`."""
    from training.export import export_safetensors

    try:
        path = export_safetensors(args.checkpoint, args.output)
    except CheckpointError as err:
        print(f"export: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


def expand_command(args: argparse.Namespace) -> int:
    """Example: `metastate expand runs/small --to metastate-450m --output runs/grown --freeze-old`."""
    from launch.expansion import expand_checkpoint

    try:
        path = expand_checkpoint(args.checkpoint, args.to, args.output, freeze_old=args.freeze_old,
                                 seed=args.seed, config=args.config)
    except (ValueError, CheckpointError) as err:
        print(f"expand: {err}", file=sys.stderr)
        return 2
    print(path)
    print(f"continue with: metastate train {Path(args.output) / 'config.yaml'} train.steps=<total steps>")
    return 0
