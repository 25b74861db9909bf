"""Where run-config values come from: YAML presets (with `base:` inheritance) and `key=value`
command-line overrides, parsed into plain nested dicts for `launch.run_config` to apply.

ConfigError lives here because this is the lowest module of the config system; users import it
from `launch.run_config`.
"""

import difflib
import re
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESET_DIR_NAME = "configs"
BASE_KEY = "base"                      # top-level preset key naming the preset it extends
MAX_BASE_DEPTH = 16


class ConfigError(ValueError):
    """A run config that cannot be used; the message is one line meant for the user."""


class _ConfigYamlLoader(yaml.SafeLoader):
    """YAML 1.1 without the surprises that bite configs.

    `1:00:00` stays a string (YAML 1.1 reads it as the base-60 int 3600, which SLURM would take as
    3600 minutes); `010` stays a string (not octal 8; omegaconf still converts it for int fields);
    `1e-3` is a float (YAML 1.1 needs a dot); duplicate keys are errors instead of last-one-wins.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found duplicate key {key!r}",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_REPLACED_TAGS = (_INT_TAG, _FLOAT_TAG, "tag:yaml.org,2002:timestamp")
_ConfigYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigYamlLoader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$"), list("-+0123456789"))
_ConfigYamlLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                   |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml_value(text: str) -> Any:
    """One YAML scalar or flow collection, as a command-line value: `[0.9,0.95]` -> [0.9, 0.95]."""
    return yaml.load(text, Loader=_ConfigYamlLoader)


def display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def preset_dirs() -> list[Path]:
    """`configs/` under the CWD, then under the repository root (existing ones, deduplicated)."""
    dirs = [Path.cwd() / PRESET_DIR_NAME, REPO_ROOT / PRESET_DIR_NAME]
    unique: list[Path] = []
    for directory in dirs:
        if directory.is_dir() and directory.resolve() not in [d.resolve() for d in unique]:
            unique.append(directory)
    return unique or dirs[:1]


def available_presets() -> list[str]:
    """Preset names visible from here: `configs/*.yaml` under the CWD and under the repo root."""
    return sorted({p.stem for directory in preset_dirs() for p in directory.glob("*.yaml")})


def find_preset(path_or_name: str | Path, relative_to: Path | None = None) -> Path:
    """The YAML file a preset name or path refers to.

    A value ending in .yaml/.yml or containing a slash is a path (relative to `relative_to`, else
    the CWD); a bare name `demo` is `configs/demo.yaml` under `relative_to`, the CWD, then the repo.
    Example: find_preset("demo") -> Path(".../configs/demo.yaml").
    """
    text = str(path_or_name)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(text).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        if not path.is_file():
            raise ConfigError(f"config file '{path}' not found")
        return path.resolve()
    directories = ([relative_to] if relative_to is not None else []) + preset_dirs()
    for directory in directories:
        candidate = directory / f"{text}.yaml"
        if candidate.is_file():
            return candidate.resolve()
    names = available_presets()
    close = difflib.get_close_matches(text, names, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    looked = ", ".join(display_path(d / f"{text}.yaml") for d in directories)
    raise ConfigError(f"no preset named '{text}' (looked for {looked}){hint} "
                      f"(available presets: {', '.join(names) or 'none'})")


def read_preset(path: Path) -> dict:
    """The mapping in a preset file, `base:` included."""
    try:
        tree = yaml.load(path.read_text(), Loader=_ConfigYamlLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = " ".join(str(error).split())
        raise ConfigError(f"cannot read {display_path(path)}: {reason} (a config is UTF-8 YAML)") from None
    if tree is None:  # an empty file would silently train the 12x768 defaults
        raise ConfigError(f"{display_path(path)} is empty; a run config extends a preset "
                          f"(e.g. 'base: demo') or sets its sections (model:, data:, train:, ...)")
    if not isinstance(tree, dict):
        raise ConfigError(f"{display_path(path)} must hold a mapping of sections "
                          f"(model:, train:, ...), got {type(tree).__name__}")
    return tree


def preset_chain(path: Path) -> list[Path]:
    """The preset and the presets it extends through `base:`, root first."""
    chain = [path]
    while True:
        base = read_preset(chain[-1]).get(BASE_KEY)
        if base is None:
            return chain[::-1]
        if not isinstance(base, str) or not base:
            raise ConfigError(f"'{BASE_KEY}' in {display_path(chain[-1])} must be a preset name "
                              f"or path, got {base!r}")
        parent = find_preset(base, relative_to=chain[-1].parent)
        if parent in chain:
            cycle = " -> ".join(display_path(p) for p in chain + [parent])
            raise ConfigError(f"presets extend each other in a cycle: {cycle}")
        if len(chain) >= MAX_BASE_DEPTH:
            raise ConfigError(f"'{BASE_KEY}' chain deeper than {MAX_BASE_DEPTH} presets at "
                              f"{display_path(chain[-1])}")
        chain.append(parent)


def parse_override(item: str) -> dict:
    """`train.steps=10` -> {"train": {"steps": 10}}; an empty value is the empty string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or "" in key.split("."):
        raise ConfigError(f"override '{item}' is not key=value (e.g. train.steps=10)")
    if key == BASE_KEY:
        raise ConfigError(f"override '{item}': '{BASE_KEY}' cannot be overridden; pass the "
                          f"preset to extend as CONFIG instead")
    try:
        value = "" if raw == "" else parse_yaml_value(raw)
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise ConfigError(f"cannot parse the value of override '{item}': {reason}") from None
    tree: dict = {}
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return tree
