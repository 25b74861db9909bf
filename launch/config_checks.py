"""Checks of a composed run config that need no runtime. Each section's dataclass owns its rules
(`problems()`, e.g. ModelConfig in model/config.py); this module only collects them, adds the
rules that span sections (tensor parallelism vs the model's heads) and the finite/int64 check of
every number, and names where each offending value was set, so a bad cluster config fails on the
login node instead of after queueing.
"""

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from model.config import ffn_width
from ops.config_rules import Problem

INT64_MAX = 2**63 - 1                  # torch and numpy counters are int64: a bigger int overflows


def check_run_config(cfg: DictConfig, origins: dict[str, str]) -> list[str]:
    """Every problem of a composed config; `origins` maps dotted keys to where they were set."""
    problems = check_numbers(cfg, origins)
    for name in cfg:
        if OmegaConf.is_list(cfg[name]):
            continue  # `stages`: launch/stage_config.py checks it, with the models its stages name
        problems += [f"{message} {_where(origins, *keys)}" for message, keys in section_problems(cfg, name)]
    problems += [f"{message} {_where(origins, *keys)}" for message, keys in cross_section_problems(cfg)]
    return problems


def section_problems(cfg: DictConfig, name: str) -> list[Problem]:
    """The rules the section's own dataclass declares."""
    return OmegaConf.to_object(cfg[name]).problems()


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


def cross_section_problems(cfg: DictConfig):
    """Rules that need two sections: tensor parallelism must split the model into whole heads."""
    p, m = cfg.parallel, cfg.model
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


def _where(origins: dict[str, str], *keys: str) -> str:
    sources: list[Any] = []
    for key in keys:
        if key in origins and origins[key] not in sources:
            sources.append(origins[key])
    return f"in {' and '.join(sources)}" if sources else "in the schema defaults"
