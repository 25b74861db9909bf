"""The `metastate` command line: subcommand registration and `config show` end to end."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch import config_commands
from launch.cli import COMMAND_MODULES, build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[2]
METASTATE = Path(sys.executable).with_name("metastate")  # the console script of this venv


def run_metastate(*args: str) -> subprocess.CompletedProcess:
    assert METASTATE.is_file(), f"{METASTATE} missing: run `pip install -e .` in this venv"
    return subprocess.run([str(METASTATE), *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


def test_config_show_prints_the_resolved_yaml():
    result = run_metastate("config", "show", "demo", "train.steps=7")
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["train"]["steps"] == 7
    assert shown["model"]["d_model"] == 128


def test_config_error_is_one_line_on_stderr_with_exit_code_2():
    result = run_metastate("config", "show", "demo", "train.stpes=7")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "config error: unknown key 'train.stpes' on the command line; "
        "did you mean 'train.steps'?"]


def test_help_lists_the_registered_commands(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "config" in capsys.readouterr().out


def test_every_command_module_sets_a_func_on_its_parsers():
    assert "launch.config_commands" in COMMAND_MODULES
    args = build_parser().parse_args(["config", "show", "demo", "train.steps=3"])
    assert args.func is config_commands.show_config
    assert (args.config, args.overrides) == ("demo", ["train.steps=3"])
    assert build_parser().parse_args(["config", "list"]).func is config_commands.list_presets


def test_config_list_names_the_shipped_presets(capsys):
    assert main(["config", "list"]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert {"demo", "smoke"} <= set(names)


def test_in_process_errors_return_2_without_raising(capsys):
    assert main(["config", "show", "demo", "model.sse=stat"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("config error: model.sse must be one of state | learned")
    assert captured.err.count("\n") == 1


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["config"])
    assert exited.value.code == 2
    assert "show" in capsys.readouterr().err
