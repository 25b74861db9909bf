"""Checks of a composed run config that need no runtime: choice fields, ranges, cross-field rules.

Each check returns one-line problem strings naming the dotted key(s) and where they were set, so a
bad cluster config fails on the login node instead of after queueing.
"""

import difflib
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from evals.config import EVAL_SPLITS
from launch.config import slurm_time_to_seconds
from model.config import (
    FAMILIES,
    OUT_NORMS,
    SSE_MODES,
    Z_NORMS,
    coerce_model_config,
    ffn_width,
    validate_model_config,
)
from ops.config import BACKENDS, chunk_size_problem, loss_chunk_size_problem
from training.config import PARALLEL_BACKENDS, TRACKING_BACKENDS, TRAIN_DTYPES, ZERO_STAGES

# data_pipeline/config.py documents these choices in field comments only; they are listed here.
DATA_FORMATS = ("jsonl", "megatron", "wds")
DATA_TOKENIZERS = ("tiktoken", "hf")
SLURM_MAX_SIGNAL_LEAD_S = 65535        # sbatch --signal accepts at most this many seconds

CHOICES: dict[str, tuple] = {
    "model.family": FAMILIES,
    "model.sse": SSE_MODES,
    "model.z_norm": Z_NORMS,
    "model.out_norm": OUT_NORMS,
    "ops.backend": BACKENDS,
    "data.format": DATA_FORMATS,
    "data.tokenizer": DATA_TOKENIZERS,
    "train.dtype": TRAIN_DTYPES,
    "parallel.backend": PARALLEL_BACKENDS,
    "parallel.zero_stage": ZERO_STAGES,
    "tracking.backend": TRACKING_BACKENDS,
    "eval.split": EVAL_SPLITS,
}

# Smallest allowed value of each numeric field that has one.
MINIMUMS: dict[str, float] = {
    "model.vocab_size": 1, "model.n_layer": 1, "model.d_model": 1, "model.d_state": 0,
    "model.head_size": 1,
    "data.seq_len": 1, "data.num_workers": 0, "data.prefetch_factor": 1,
    "optim.min_lr_ratio": 0, "optim.weight_decay": 0, "optim.warmup_steps": 0,
    "optim.rewarm_steps": 0,
    "optim.grad_clip": 0,
    "train.steps": 1, "train.global_batch_size": 1, "train.micro_batch_size": 1,
    "train.eval_every": 0, "train.eval_batches": 1, "train.log_every": 1,
    "train.max_bad_steps": 1, "train.stop_after": 0,
    "parallel.tp": 1,
    "checkpoint.every": 0, "checkpoint.keep_last": 0,
    "launch.nodes": 1, "launch.gpus_per_node": 1, "launch.signal_grace_s": 0,
    "launch.cpus_per_node": 0,
    "eval.max_tokens": 0, "eval.batch_size": 1, "eval.context": 0, "eval.stride": 0,
}

# Fields that must be strictly positive (zero is as wrong as a negative value).
POSITIVES = ("optim.lr", "optim.eps", "optim.w0_lr_mult")
INT64_MAX = 2**63 - 1                  # torch and numpy counters are int64: a bigger int overflows


def check_run_config(cfg: DictConfig, origins: dict[str, str]) -> list[str]:
    """Every problem of a composed config; `origins` maps dotted keys to where they were set."""
    problems = check_choices(cfg, origins) + check_rules(cfg, origins)
    if not any(problem.startswith("model.") for problem in problems):
        # The model package's own rules (RoPE head size, LoRA ranks, ...), for what ours miss.
        try:
            validate_model_config(coerce_model_config(cfg.model))
        except ValueError as error:
            named = [key for key in origins if key.startswith("model.") and key in str(error)]
            problems.append(f"{error} {_where(origins, *named)}")
    return problems


def check_choices(cfg: DictConfig, origins: dict[str, str]) -> list[str]:
    problems = []
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value in choices:
            continue
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(f"{key} must be one of {' | '.join(map(str, choices))}, got {value!r}"
                        f"{hint} {_where(origins, key)}")
    return problems


def check_numbers(cfg: DictConfig, origins: dict[str, str]) -> list[str]:
    """Every number is finite (an inf lr passes `> 0`) and every integer fits in int64."""
    problems = []
    for key, value in _leaves(OmegaConf.to_container(cfg, resolve=True)):
        if isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key} must be a finite number, got {value} {_where(origins, key)}")
        elif isinstance(value, int) and abs(value) > INT64_MAX:
            problems.append(f"{key}={value} is out of range (at most {INT64_MAX}) "
                            f"{_where(origins, key)}")
    return problems


def _leaves(tree: Any, prefix: str = ""):
    if isinstance(tree, dict):
        for name, value in tree.items():
            yield from _leaves(value, f"{prefix}{name}.")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _leaves(value, f"{prefix[:-1]}[{index}].")
    else:
        yield prefix[:-1], tree


def check_rules(cfg: DictConfig, origins: dict[str, str]) -> list[str]:
    problems = check_numbers(cfg, origins)
    for key, minimum in MINIMUMS.items():
        value = OmegaConf.select(cfg, key)
        if not value >= minimum:  # also catches NaN
            problems.append(f"{key} must be >= {minimum}, got {value} {_where(origins, key)}")
    for key in POSITIVES:
        value = OmegaConf.select(cfg, key)
        if not value > 0:
            problems.append(f"{key} must be > 0, got {value} {_where(origins, key)}")
    for rule in (_model_rules, _ops_rules, _optim_rules, _train_rules, _parallel_rules, _tracking_rules,
                 _launch_rules):
        problems += [f"{message} {_where(origins, *keys)}" for message, keys in rule(cfg)]
    return problems


def _model_rules(cfg: DictConfig):
    m = cfg.model
    if m.head_size >= 1 and m.d_model % m.head_size:
        yield (f"model.d_model ({m.d_model}) must be a multiple of model.head_size "
               f"({m.head_size})", ("model.d_model", "model.head_size"))
    if m.head_size >= 1 and m.d_state % m.head_size:
        yield (f"model.d_state ({m.d_state}) must be a multiple of model.head_size "
               f"({m.head_size}); 0 means d_model", ("model.d_state", "model.head_size"))


def _ops_rules(cfg: DictConfig):
    problem = chunk_size_problem(cfg.ops.chunk_size)
    if problem:
        yield f"ops.{problem}", ("ops.chunk_size",)
    problem = loss_chunk_size_problem(cfg.ops.loss_chunk_size)
    if problem:
        yield f"ops.{problem}", ("ops.loss_chunk_size",)


def _optim_rules(cfg: DictConfig):
    o = cfg.optim
    if o.min_lr_ratio > 1:
        yield f"optim.min_lr_ratio must be <= 1, got {o.min_lr_ratio}", ("optim.min_lr_ratio",)
    betas = list(o.betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        yield f"optim.betas must be two numbers in [0, 1), got {betas}", ("optim.betas",)


def _train_rules(cfg: DictConfig):
    t = cfg.train
    if t.micro_batch_size >= 1 and t.global_batch_size % t.micro_batch_size:
        yield (f"train.global_batch_size ({t.global_batch_size}) must be a multiple of "
               f"train.micro_batch_size ({t.micro_batch_size})",
               ("train.global_batch_size", "train.micro_batch_size"))
    if not t.resume.strip():
        yield "train.resume must be none, auto or a checkpoint path, got ''", ("train.resume",)


def _parallel_rules(cfg: DictConfig):
    p, m = cfg.parallel, cfg.model
    if p.dp != -1 and p.dp < 1:
        yield f"parallel.dp must be -1 (world_size / tp) or >= 1, got {p.dp}", ("parallel.dp",)
    if p.backend == "deepspeed" and p.tp != 1:
        yield (f"parallel.tp must be 1 with parallel.backend=deepspeed (ZeRO has no tensor "
               f"parallel here), got {p.tp}; use parallel.backend=fsdp2 for tp > 1",
               ("parallel.tp", "parallel.backend"))
    if p.tp > 1 and m.head_size >= 1:
        yield from _tensor_parallel_rules(p.tp, m)


def _tensor_parallel_rules(tp: int, m):
    """Every width that tensor parallelism splits must split into whole heads per rank."""
    if m.family == "transformer":
        split = {"attention heads (model.d_model / model.head_size)": m.d_model // m.head_size}
        keys: tuple[str, ...] = ("parallel.tp", "model.d_model", "model.head_size")
    else:
        split = {"state heads (model.d_state or d_model / model.head_size)":
                 (m.d_state or m.d_model) // m.head_size}
        keys = ("parallel.tp", "model.d_state", "model.d_model", "model.head_size")
    if m.family != "metastate":
        split[f"{m.family} FFN channels (model.ffn_dim or its default)"] = ffn_width(m)
        keys += ("model.ffn_dim",)
    for what, count in split.items():
        if count % tp:
            yield f"parallel.tp ({tp}) must divide the {count} {what}", keys
    if m.family == "metastate" and m.out_norm == "full":
        yield (f"parallel.tp ({tp}) needs model.out_norm=head: out_norm=full normalises over all "
               f"state heads, which tensor parallelism splits", ("parallel.tp", "model.out_norm"))


def _tracking_rules(cfg: DictConfig):
    if cfg.tracking.backend == "mlflow" and not cfg.tracking.experiment.strip():
        yield ("tracking.experiment must name an MLflow experiment when tracking.backend=mlflow",
               ("tracking.experiment",))


def _launch_rules(cfg: DictConfig):
    lc = cfg.launch
    limit_s = slurm_time_to_seconds(lc.time)
    if limit_s is None:
        yield (f"launch.time must be a SLURM time (MM, MM:SS, HH:MM:SS or D-HH[:MM[:SS]]), "
               f"got {lc.time!r}", ("launch.time",))
    elif lc.signal_grace_s >= limit_s:
        yield (f"launch.signal_grace_s ({lc.signal_grace_s}) must be shorter than launch.time "
               f"({lc.time} = {limit_s} s)", ("launch.signal_grace_s", "launch.time"))
    if lc.signal_grace_s > SLURM_MAX_SIGNAL_LEAD_S:
        yield (f"launch.signal_grace_s must be <= {SLURM_MAX_SIGNAL_LEAD_S} (sbatch --signal "
               f"limit), got {lc.signal_grace_s}", ("launch.signal_grace_s",))


def _where(origins: dict[str, str], *keys: str) -> str:
    sources: list[Any] = []
    for key in keys:
        if key in origins and origins[key] not in sources:
            sources.append(origins[key])
    return f"in {' and '.join(sources)}" if sources else "in the schema defaults"
