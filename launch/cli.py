"""The `metastate` command line. Each module in COMMAND_MODULES contributes subcommands through
`register(subparsers)`, setting a `func(args) -> int` default on each parser it adds."""

import argparse
import importlib
import pickle
import sys
from collections.abc import Sequence

from launch.run_config import ConfigError

COMMAND_MODULES = ("launch.config_commands", "launch.model_commands", "launch.data_commands",
                   "launch.train_commands", "launch.launch_commands", "launch.eval_commands")


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures that bad input, bad files or a bad file system cause: each is a one-line message
    and exit code 2. Anything else is a bug and keeps its traceback."""
    from data_pipeline.megatron_format import ShardFormatError
    from data_pipeline.stats import DataError
    from data_pipeline.tokenizer import TokenizerError
    from evals.runs import RunsError
    from model.expansion_rules import ExpansionError
    from training.checkpointing import CheckpointError
    from training.safe_dcp import UnsafeCheckpointError

    return (DataError, ShardFormatError, TokenizerError, RunsError, ExpansionError, CheckpointError,
            UnsafeCheckpointError, pickle.UnpicklingError, UnicodeDecodeError, OSError)


def one_line(command: str, error: BaseException) -> str:
    """`command: message` on one line, without repeating a prefix the message already has."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if text.startswith(f"{command}: ") else f"{command}: {text}"


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


def main(argv: Sequence[str] | None = None, as_program: bool = False) -> int:
    """Run one subcommand. A ConfigError, or any expected failure (data, checkpoint, safety
    refusal, file system), becomes one line on stderr and exit code 2.

    `as_program`: this call is the whole process (the `metastate` command, `python -m
    launch.cli`), so `train` may end the process if it hangs after its run
    (training/exit_watchdog.py); a caller that goes on working leaves it False.

    Example: main(["config", "show", "demo", "train.steps=7"]) prints the YAML and returns 0.
    """
    args = build_parser().parse_args(argv)
    args.as_program = as_program
    try:
        return args.func(args)
    except ConfigError as error:
        print("config error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
    except expected_errors() as error:
        print(one_line(args.command, error), file=sys.stderr)
        return 2


def program() -> int:
    """The `metastate` command's entry point."""
    return main(as_program=True)


if __name__ == "__main__":
    sys.exit(program())
