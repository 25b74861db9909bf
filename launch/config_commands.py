"""`metastate config ...`: inspect run configs without starting anything."""

import argparse

from launch.run_config import available_presets, find_preset, load_run_config, to_yaml


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
    """Print the validated, resolved config. Example: `metastate config show demo train.steps=7`."""
    print(to_yaml(load_run_config(args.config, args.overrides)), end="")
    return 0


def list_presets(args: argparse.Namespace) -> int:
    """Print each preset name and its file. Example: `metastate config list`."""
    for name in available_presets():
        print(f"{name}\t{find_preset(name)}")
    return 0
