"""SLURM jobs for a run config: the checks a job must pass before it queues, and the sbatch
script (a template with {{NAME}} placeholders; the built-in one is launch/templates/sbatch.sh).

`metastate submit` (launch/launch_commands.py) is the command-line face of this module.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from data_pipeline.stats import DataError
from launch.preset_files import ConfigError
from launch.stages import config_to_check
from training.checkpointing import CheckpointError
from training.layout import plan_layout
from training.preflight import preflight

_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")
PLACEHOLDERS = ("JOB_NAME", "NODES", "NPROC_PER_NODE", "LOG_DIR", "SBATCH_OPTIONS", "WORKDIR",
                "SHUTDOWN_TIMEOUT_S", "PYTHON", "TRAIN_ARGS")
TORCHRUN_SHUTDOWN_TIMEOUT_S = 30       # torchrun's own default


def shutdown_timeout_s(launch_cfg) -> int:
    """How long torchrun waits for its ranks to checkpoint after forwarding a signal: the grace
    (0 = no early signal, but a SIGTERM still deserves torchrun's default 30 s)."""
    return launch_cfg.signal_grace_s or TORCHRUN_SHUTDOWN_TIMEOUT_S


def world_size(launch_cfg) -> int:
    return launch_cfg.nodes * launch_cfg.gpus_per_node


def check_before_start(cfg, world: int, where: str) -> None:
    """Everything a job can get wrong before it queues: ranks vs the parallel section, batch
    divisibility, data paths, the checkpoint to resume, a writable checkpoint directory."""
    try:
        layout = plan_layout(cfg.parallel, world)
    except ValueError as err:
        raise ConfigError(f"{err} (the job has {where})") from None
    try:
        preflight(config_to_check(cfg), layout)  # a staged run: the stage that runs now
    except (ValueError, DataError, CheckpointError) as err:
        raise ConfigError(str(err)) from None
    _check_writable(Path(cfg.train.out_dir))


def _check_writable(out_dir: Path) -> None:
    """The run directory can be created and written, checked without writing anything (a dry
    run writes nothing): its nearest existing ancestor must be a writable directory."""
    existing = out_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"train.out_dir={out_dir}: cannot write checkpoints there ({existing} is "
                          "not a writable directory); pick a writable train.out_dir")


def template_text(launch_cfg) -> tuple[str, str]:
    """The sbatch template's text and where it came from (launch.template, or the built-in one)."""
    if not launch_cfg.template:
        return resources.files("launch").joinpath("templates/sbatch.sh").read_text(), "built-in template"
    path = Path(launch_cfg.template).expanduser()
    try:
        return path.read_text(), str(path)
    except OSError as err:
        raise ConfigError(f"launch.template={launch_cfg.template}: cannot read it ({err.strerror or err}); "
                          "pass an sbatch template file, or '' for the built-in one") from None


def sbatch_options(launch_cfg) -> list[str]:
    lc = launch_cfg
    options = [f"--time={lc.time}"]
    if lc.signal_grace_s > 0:
        options.append(f"--signal=USR1@{lc.signal_grace_s}")
    if lc.request_gpus:
        options.append(f"--gpus-per-node={lc.gpus_per_node}")
    if lc.cpus_per_node > 0:
        options.append(f"--cpus-per-task={lc.cpus_per_node}")
    for flag, value in (("partition", lc.partition), ("account", lc.account), ("qos", lc.qos)):
        if value:
            options.append(f"--{flag}={value}")
    return options


def render_sbatch(cfg, config: str, overrides: list[str], workdir: Path | None = None) -> str:
    """The sbatch script for a run; `config` and `overrides` are what `metastate train` gets.

    Example:
        >>> print(render_sbatch(load_run_config("smoke"), "smoke", ["train.steps=10"]))
    """
    lc = cfg.launch
    text, source = template_text(lc)
    workdir = Path(workdir or Path.cwd()).resolve()
    values = {
        "JOB_NAME": f"metastate-{Path(cfg.train.out_dir).name}",
        "NODES": str(lc.nodes),
        "NPROC_PER_NODE": str(lc.gpus_per_node),
        "LOG_DIR": shlex.quote(str(log_dir(cfg, workdir))),
        "SBATCH_OPTIONS": "\n".join(f"#SBATCH {option}" for option in sbatch_options(lc)),
        "WORKDIR": shlex.quote(str(workdir)),
        "SHUTDOWN_TIMEOUT_S": str(shutdown_timeout_s(lc)),
        "PYTHON": shlex.quote(sys.executable),
        "TRAIN_ARGS": shlex.join([config, *overrides]),
    }
    unknown = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if unknown:
        named = ", ".join("{{" + name + "}}" for name in unknown)
        raise ConfigError(f"launch.template ({source}) uses unknown placeholder(s) {named}; "
                          f"known: {', '.join(PLACEHOLDERS)}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def log_dir(cfg, workdir: Path) -> Path:
    """SLURM's stdout/stderr files (slurm-JOBID.out/.err) go here, inside the run directory."""
    return (workdir / cfg.train.out_dir / "slurm").resolve()


def submit_script(script: str, script_path: Path) -> str:
    """Write the script, run `sbatch --parsable` on it and return the job id."""
    if shutil.which("sbatch") is None:
        raise ConfigError("sbatch is not on PATH: run `metastate submit` on a SLURM login node, or use "
                          "`metastate launch local` on a single machine")
    script_path.parent.mkdir(parents=True, exist_ok=True)
    script_path.write_text(script)
    proc = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        reason = " ".join((proc.stderr or proc.stdout).split())
        raise ConfigError(f"sbatch rejected {script_path}: {reason}")
    return proc.stdout.strip().split(";")[0]

