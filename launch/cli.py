"""The `metastate` command line. Each module in COMMAND_MODULES contributes subcommands through
`register(subparsers)`, setting a `func(args) -> int` default on each parser it adds."""

import argparse
import importlib
import sys
from collections.abc import Sequence

from launch.run_config import ConfigError

COMMAND_MODULES = ("launch.config_commands", "model.cli", "data_pipeline.cli", "training.cli",
                   "launch.launch_commands", "evals.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metastate",
        description="Pretraining stack for Meta-State language models.",
        epilog="example: metastate config show demo train.steps=10")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    subparsers.metavar = "{" + ",".join(subparsers.choices) + "}"  # named in "required" errors
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a ConfigError becomes a one-line message on stderr and exit code 2.

    Example: main(["config", "show", "demo", "train.steps=7"]) prints the YAML and returns 0.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as error:
        print("config error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
