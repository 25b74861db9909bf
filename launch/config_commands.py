"""`metastate config ...`: inspect run configs without starting anything."""

import argparse
import sys

from launch.run_config import available_presets, find_preset, load_run_config_with_origins, to_yaml

ANNOTATED_SECTION = "model"            # its values come from presets, files and overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    config = subparsers.add_parser("config", help="inspect run configs (presets + overrides)",
                                   description="Inspect run configs without starting anything.")
    commands = config.add_subparsers(dest="config_command", required=True)

    show = commands.add_parser(
        "show", help="print the resolved config as YAML",
        description="Compose a preset with key=value overrides, validate it, print it as YAML.",
        epilog="example: metastate config show demo train.steps=10 model.n_layer=4")
    show.add_argument("config", metavar="CONFIG", help="preset name (demo) or YAML path")
    show.add_argument("overrides", metavar="key=value", nargs="*",
                      help="dotted overrides, applied in order (train.steps=10)")
    show.set_defaults(func=show_config)

    listing = commands.add_parser("list", help="list the presets and their files",
                                  description="List the presets found under ./configs and the "
                                              "repository's configs/ directory.")
    listing.set_defaults(func=list_presets)
    commands.metavar = "{" + ",".join(commands.choices) + "}"  # named in "required" errors


def show_config(args: argparse.Namespace) -> int:
    """Print the validated, resolved config, each model field with where its value came from.

    Example: `metastate config show demo model.preset=metastate-150m model.n_layer=12`.
    """
    missing_env: list[str] = []
    cfg, origins = load_run_config_with_origins(args.config, args.overrides, missing_env)
    print(annotate_origins(to_yaml(cfg), origins, ANNOTATED_SECTION), end="")
    if cfg.stages:
        from launch.stages import describe_stages

        print(describe_stages(cfg), end="")
    for name in missing_env:  # shown, not fatal: train and submit still refuse it
        print(f"note: the environment variable {name} is not set, so the values above show "
              f"${name}; export {name}=... (or override the keys naming it) before train or submit",
              file=sys.stderr)
    return 0


def annotate_origins(text: str, origins: dict[str, str], section: str) -> str:
    """`  n_layer: 12` -> `  n_layer: 12  # command-line override 'model.n_layer=12'` for each
    top-level key of `section` in the YAML `text` (a YAML comment, so the output still parses)."""
    lines, inside = [], False
    for line in text.splitlines():
        if not line.startswith(" "):
            inside = line == f"{section}:"
        elif inside and line.startswith("  ") and not line.startswith("   ") and ":" in line:
            key = f"{section}.{line.strip().split(':', 1)[0]}"
            line += f"  # {origins.get(key, 'schema default')}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def list_presets(args: argparse.Namespace) -> int:
    """Print each preset name and its file. Example: `metastate config list`."""
    for name in available_presets():
        print(f"{name}\t{find_preset(name)}")
    return 0
