"""The run config: every component's schema composed into one `RunConfig`, loaded from a YAML preset
plus command-line overrides, and checked before anything expensive starts.

Composition order (later wins): schema defaults -> the preset's `base:` chain, root first -> the
preset -> `key=value` overrides in command-line order. Every problem is a `ConfigError` that names
the dotted key, where the value came from, and the nearest valid key or choice.
"""

import dataclasses
import difflib
import os
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data_pipeline.config import DataConfig
from evals.config import EvalConfig
from launch.config import LaunchConfig
from launch.config_checks import check_run_config
from launch.model_preset_layer import PRESET_KEY, ModelPresetLayer, family_conflict, pop_model_preset
from launch.preset_files import (
    BASE_KEY,
    ConfigError,
    available_presets,
    display_path,
    find_preset,
    parse_override,
    preset_chain,
    read_preset,
)
from launch.stage_config import StageConfig, resolve_stages, stage_problems
from model.config import ModelConfig
from model.expansion_rules import ExpansionError, check_expansion
from model.presets import PRESETS, model_preset
from ops.config import OpsConfig
from training.config import (
    CheckpointConfig,
    OptimConfig,
    ParallelConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "ConfigError", "RunConfig", "load_run_config", "load_run_config_with_origins", "to_yaml", "to_plain_dict",
    "find_preset", "available_presets", "stage_model", "stages_of",
]


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stages: list[StageConfig] = field(default_factory=list)   # a progressive run (stage_config.py)


_UNSET_ENV = re.compile(r"Environment variable '([^']+)' not found")


# ---------------------------------------------------------------------------------------------
# Public API


def load_run_config(path_or_name: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a preset (a bare name such as `demo`, or a YAML path) and apply dotlist overrides.

    Returns a resolved, RunConfig-typed DictConfig; pass `cfg.model`, `cfg.data`, ... to components.
    Raises ConfigError naming the key, its source and a suggestion for any invalid value.

    Example:
        >>> cfg = load_run_config("demo", ["train.steps=10", "model.n_layer=4"])
        >>> cfg.train.steps, cfg.model.n_layer
        (10, 4)
    """
    return load_run_config_with_origins(path_or_name, overrides)[0]


def load_run_config_with_origins(path_or_name: str | Path, overrides: Sequence[str] = (),
                                 missing_env: list[str] | None = None
                                 ) -> tuple[DictConfig, dict[str, str]]:
    """`load_run_config`, plus where each set key came from: {"train.steps": "configs/demo.yaml"}.

    Keys left at their schema default are absent. With a `missing_env` list, an unset
    environment variable a value names (`${oc.env:METASTATE_PILE}`) is not an error: it stays
    in the value as `$NAME` and its name is appended to the list (for `metastate config show`,
    which starts nothing). Example:
        >>> cfg, origins = load_run_config_with_origins("demo", ["model.preset=rwkv7-tiny"])
        >>> origins["model.n_layer"]
        "model.preset=rwkv7-tiny in command-line override 'model.preset=rwkv7-tiny'"
    """
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of 'key=value' strings, got the string "
                        f"{overrides!r}; wrap it in a list")
    cfg = OmegaConf.structured(RunConfig)
    origins: dict[str, str] = {}
    problems: list[str] = []
    model_preset = None
    for path in preset_chain(find_preset(path_or_name)):
        tree = read_preset(path)
        tree.pop(BASE_KEY, None)
        model_preset = _apply_model_preset(cfg, tree, display_path(path), origins) or model_preset
        unknown = _apply_tree(cfg, tree, display_path(path), origins, problems)
        problems[:0] = _unknown_keys_problem(unknown, f"in {display_path(path)}")
    unknown = []
    for item in overrides:
        source = f"command-line override '{item}'"
        tree = parse_override(item)
        model_preset = _apply_model_preset(cfg, tree, source, origins) or model_preset
        unknown += _apply_tree(cfg, tree, source, origins, problems)
    problems[:0] = _unknown_keys_problem(unknown, "on the command line")
    problems += family_conflict(model_preset, cfg.model.family,
                                origins.get("model.family", "the schema defaults"))
    if problems:
        raise ConfigError("; ".join(problems))
    _resolve(cfg, origins, missing_env)
    problems = check_run_config(cfg, origins)
    problems += [f"{message} {_from(origins, 'stages')}" for message, _ in stage_problems(
        cfg.stages, to_plain_dict(cfg.model), cfg.train.steps, cfg.parallel.backend, stage_model,
        _growth_problem)]
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg, origins


def _resolve(cfg: DictConfig, origins: dict[str, str], missing_env: list[str] | None) -> None:
    placeholders: dict[str, str] = {}
    try:
        while True:
            try:
                OmegaConf.resolve(cfg)
                return
            except OmegaConfBaseException as error:
                key = getattr(error, "full_key", "") or "?"
                reason = str(error).splitlines()[0]
                unset = _UNSET_ENV.search(reason)
                if unset and missing_env is not None and unset[1] not in placeholders:
                    placeholders[unset[1]] = os.environ[unset[1]] = f"${unset[1]}"
                    missing_env.append(unset[1])
                elif unset:  # `${oc.env:VAR}`: say what to do, not which KeyError omegaconf caught
                    raise ConfigError(f"{key} {_from(origins, key)} needs the environment variable "
                                      f"{unset[1]}, which is not set; export {unset[1]}=... or pass "
                                      f"{key}=... on the command line") from None
                else:
                    raise ConfigError(f"cannot resolve '{key}' {_from(origins, key)}: {reason}") from None
    finally:
        for name in placeholders:
            del os.environ[name]


def stage_model(name: str) -> dict:
    """The model section a stage's `model` names: a model preset's fields, or a run config's
    model section (a preset name such as demo, or a YAML path).

    Example: stage_model("metastate-450m")["n_layer"] == 24
    """
    if name in PRESETS:
        return dataclasses.asdict(model_preset(name))
    try:
        return to_plain_dict(load_run_config(name).model)
    except ConfigError as err:
        raise ConfigError(f"{name!r} is neither a model preset ({', '.join(sorted(PRESETS))}) nor a "
                          f"loadable run config ({err})") from None


def stages_of(cfg: DictConfig) -> list:
    """The run's stages resolved (launch/stage_config.Stage); [] for a run without stages."""
    return resolve_stages(cfg.stages, to_plain_dict(cfg.model), cfg.train.steps, stage_model)


def _growth_problem(parent: dict, target: dict) -> str | None:
    try:
        check_expansion(parent, target)
    except ExpansionError as err:
        return str(err)
    return None


def _apply_model_preset(cfg: DictConfig, tree: dict, source: str,
                        origins: dict[str, str]) -> ModelPresetLayer | None:
    """Apply the `model.preset` a layer names (before the layer's own keys, which override it)."""
    preset = pop_model_preset(tree, source)
    if preset is not None:
        _apply_tree(cfg, preset.tree, preset.origin, origins, [])
    return preset


def to_yaml(cfg: DictConfig) -> str:
    """The config as YAML with interpolations resolved, e.g. `print(to_yaml(cfg))`."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_plain_dict(cfg: DictConfig) -> dict[str, Any]:
    """The config as nested plain dicts/lists (for JSON, MLflow params or checkpoint metadata)."""
    return OmegaConf.to_container(cfg, resolve=True)


# ---------------------------------------------------------------------------------------------
# Applying a layer: unknown keys, sections given as values, and type errors, all collected


def _section_fields(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in fields(schema)}


def _all_keys(schema: type = RunConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, annotation in _section_fields(schema).items():
        keys.append(prefix + name)
        if is_dataclass(annotation):
            keys += _all_keys(annotation, f"{prefix}{name}.")
    return keys


def _apply_tree(cfg: DictConfig, tree: dict, source: str, origins: dict[str, str],
                problems: list[str]) -> list[tuple[str, str]]:
    """Set every known leaf of `tree` on `cfg`; append type problems, return the unknown keys."""
    unknown: list[tuple[str, str]] = []
    leaves: list[tuple[str, Any, Any]] = []
    _walk(tree, RunConfig, "", unknown, problems, leaves, source)
    for key, value, annotation in leaves:
        try:
            OmegaConf.update(cfg, key, _as_declared(value, annotation), merge=False)
        except OmegaConfBaseException:
            problems.append(f"{key} must be {_type_phrase(annotation)}, got {_show(value)} "
                            f"in {source}")
            continue
        origins[key] = source
    return unknown


def _settable_keys() -> list[str]:
    """Every key a layer may set: the schema's, plus `model.preset` (expanded before the schema)."""
    return _all_keys() + [f"model.{PRESET_KEY}"]


def _unknown_keys_problem(unknown: list[tuple[str, str]], where: str) -> list[str]:
    if len(unknown) == 1:
        key, hint = unknown[0]
        return [f"unknown key '{key}' {where}; {hint}"]
    if unknown:
        return [f"unknown keys {where}: " + ", ".join(f"'{k}' ({h})" for k, h in unknown)]
    return []


def _walk(tree: dict, schema: type, prefix: str, unknown: list[str], problems: list[str],
          leaves: list, source: str) -> None:
    known = _section_fields(schema)
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if name not in known:
            for unknown_key in _leaf_keys(value, key):
                suggestion = _suggest_key(unknown_key)
                hint = f"did you mean '{suggestion}'?" if suggestion else _valid_keys_hint(prefix)
                unknown.append((unknown_key, hint))
            continue
        annotation = known[name]
        if is_dataclass(annotation):
            if isinstance(value, dict):
                _walk(value, annotation, key + ".", unknown, problems, leaves, source)
            else:
                first = fields(annotation)[0].name
                problems.append(f"'{key}' in {source} is a section, not a value; set its keys, "
                                f"e.g. {key}.{first}=...")
        elif isinstance(value, dict):
            problems.append(f"{key} must be {_type_phrase(annotation)}, got a mapping in {source}")
        elif _section_list_item(annotation) is not None:
            entries = _section_list(key, value, _section_list_item(annotation), unknown, problems, source)
            if entries is not None:
                leaves.append((key, entries, annotation))
        else:
            leaves.append((key, value, annotation))


def _section_list_item(annotation: Any) -> type | None:
    """The section type of a list-of-sections field (`stages: list[StageConfig]`), else None."""
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (Any,)
        if is_dataclass(item):
            return item
    return None


def _section_list(key: str, value: Any, item: type, unknown: list, problems: list[str],
                  source: str) -> list[DictConfig] | None:
    """A list of sections (`stages`) is given whole: each entry a mapping of the section's keys.
    Unknown keys are collected as `stages[1].modle`, wrong types appended to `problems`; returns
    the typed entries, or None when the list cannot be set."""
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        first = fields(item)[0].name
        problems.append(f"{key} must be a list of mappings such as [{{{first}: ...}}], got "
                        f"{_show(value)} in {source}")
        return None
    hints, entries, valid = _section_fields(item), [], True
    for index, entry in enumerate(value):
        for name in [name for name in entry if name not in hints]:
            match = difflib.get_close_matches(name, list(hints), n=1, cutoff=0.6)
            hint = f"did you mean '{match[0]}'?" if match else f"valid keys: {', '.join(hints)}"
            unknown.append((f"{key}[{index}].{name}", hint))
            valid = False
        typed = OmegaConf.structured(item)
        for name, v in entry.items():
            if name not in hints:
                continue
            try:
                typed[name] = _as_declared(v, hints[name])
            except OmegaConfBaseException:
                problems.append(f"{key}[{index}].{name} must be {_type_phrase(hints[name])}, got "
                                f"{_show(v)} in {source}")
                valid = False
        entries.append(typed)
    return entries if valid else None


def _leaf_keys(value: Any, key: str) -> list[str]:
    # `trian: {steps: 1}` reports 'trian.steps', so the suggestion can be 'train.steps'.
    if isinstance(value, dict) and value:
        return [leaf for name, v in value.items() for leaf in _leaf_keys(v, f"{key}.{name}")]
    return [key]


def _suggest_key(key: str) -> str | None:
    """The nearest valid key: a sibling, then the same name in another section, then (only when
    the section itself is unknown) any key."""
    all_keys = _settable_keys()
    parent, _, name = key.rpartition(".")
    by_name = {k.rpartition(".")[2]: k for k in all_keys if "." in k}
    if not parent and name in by_name:  # `steps=5` means train.steps, not the section `stages`
        return by_name[name]
    siblings = [k.rpartition(".")[2] for k in all_keys if k.rpartition(".")[0] == parent]
    match = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    if match:
        return f"{parent}.{match[0]}" if parent else match[0]
    match = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.8)
    if match:
        return by_name[match[0]]
    if parent in all_keys:
        return None
    match = difflib.get_close_matches(key, all_keys, n=1, cutoff=0.6)
    return match[0] if match else None


def _valid_keys_hint(prefix: str) -> str:
    parent = prefix.rstrip(".")
    keys = [k.rpartition(".")[2] for k in _settable_keys() if k.rpartition(".")[0] == parent]
    return f"{'valid keys of ' + repr(parent) if parent else 'valid sections'}: {', '.join(keys)}"


def _as_declared(value: Any, annotation: Any) -> Any:
    # YAML reads `lr: 1` as an int; hand float fields a float so omegaconf need not convert.
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(annotation) is list and isinstance(value, list):
        (item,) = typing.get_args(annotation) or (Any,)
        return [_as_declared(v, item) for v in value]
    return value


def _type_phrase(annotation: Any) -> str:
    phrases = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if annotation in phrases:
        return phrases[annotation]
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (Any,)
        inner = phrases.get(item, "values").removeprefix("an ").removeprefix("a ")
        return f"a list of {inner}s" if item in phrases else "a list"
    return getattr(annotation, "__name__", str(annotation))


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _from(origins: dict[str, str], key: str) -> str:
    return f"in {origins[key]}" if key in origins else "in the schema defaults"


