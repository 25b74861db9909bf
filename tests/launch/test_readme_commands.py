"""The newcomer's path: README's "Use" commands run verbatim after `make demo`, and its scale-out
commands pass every check a launch makes before it starts processes."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launch.cli import main
from launch.run_config import load_run_config
from launch.slurm import check_before_start

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent     # the venv's bin: what `source .venv/bin/activate` puts on PATH
# A shorter `make demo` (CI budget); the README commands themselves run unchanged.
SHORT_DEMO = "train.steps=4 train.eval_every=4 checkpoint.every=4 train.log_every=2"


def readme_blocks(section: str) -> list[list[str]]:
    """The command lines of each ```bash block in README's `section` (up to the next heading)."""
    text = (REPO / "README.md").read_text()
    body = re.split(r"^#+ ", text.split(f"\n{section}\n", 1)[1], maxsplit=1, flags=re.M)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, re.S)
    return [[line for line in block.splitlines() if line.strip()] for block in blocks]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A directory standing in for a fresh checkout's root (data/ from the repository) in which
    `make demo` has just run."""
    root = tmp_path_factory.mktemp("checkout")
    (root / "data").symlink_to(REPO / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # -o setup: the venv running this test is the installed one; make must not reinstall it
    demo = subprocess.run(["make", "-f", str(REPO / "Makefile"), "-o", "setup", "demo", f"BIN={BIN}",
                           f"DEMO_ARGS={SHORT_DEMO}"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert re.search(r"^final validation loss: \d+\.\d+ at step 4 \(periodic check: the first "
                     r"4,096 tokens of the val split; `metastate eval runs/demo-\S+ --split val` "
                     r"scores eval.max_tokens=65,536, a different number\)$", demo.stdout, re.M)
    link = root / "runs/demo"
    assert link.is_symlink() and re.fullmatch(r"demo-\d{8}-\d{6}", os.readlink(link))
    assert (link / "checkpoints").is_dir()
    return root


@pytest.mark.slow
def test_every_use_command_runs_verbatim_after_make_demo(checkout):
    (commands,) = readme_blocks("## Use")
    assert len(commands) >= 8 and all(c.startswith("metastate ") for c in commands)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=checkout, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    for made in ("runs/demo/checkpoints", "runs/small/checkpoints", "runs/grown/config.yaml",
                 "runs/curves.png", "runs/val-tok/manifest.json"):
        assert (checkout / made).exists(), made


def test_a_second_make_demo_moves_the_link_and_a_real_runs_demo_directory_is_left_alone(tmp_path):
    # the link logic alone, with `metastate` replaced by a stub that only creates the run directory
    stub = tmp_path / "bin" / "metastate"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nmkdir -p "${3#train.out_dir=}"\n')
    stub.chmod(0o755)
    make = ["make", "-f", str(REPO / "Makefile"), "-o", "setup", "demo", f"BIN={stub.parent}"]
    (tmp_path / "runs").mkdir()
    os.symlink("demo-old", tmp_path / "runs/demo")
    result = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert os.readlink(tmp_path / "runs/demo") != "demo-old"
    os.unlink(tmp_path / "runs/demo")
    (tmp_path / "runs/demo").mkdir()
    result = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "runs/demo").is_symlink()
    assert "runs/demo is a directory, not a link: left as it is" in result.stdout


def scale_out_launch(command: str) -> tuple[str, list[str], int] | None:
    """(config, overrides, ranks) of a documented torchrun / launch local command; None otherwise."""
    words = shlex.split(command, comments=True)
    if words[:1] == ["torchrun"]:
        ranks = int(words[words.index("--nproc-per-node") + 1])
        config, *overrides = words[words.index("train") + 1:]
        return config, overrides, ranks
    if words[:3] == ["metastate", "launch", "local"]:
        at = words.index("--nproc")
        ranks = int(words[at + 1])
        config, *overrides = words[3:at] + words[at + 2:]
        return config, overrides, ranks
    return None


def test_every_scale_out_command_passes_the_checks_before_launch(pile_dir, tmp_path, monkeypatch,
                                                                capsys):
    """torchrun and `launch local` lines are checked for their rank count as a launch checks them
    (batch split, mesh, data, run directory) and `submit --dry-run` lines run as written; only
    GPUs and the Pile itself are stood in for (one tiny shard in the Pile's layout)."""
    monkeypatch.setenv("METASTATE_PILE", str(pile_dir))
    monkeypatch.chdir(REPO)  # configs/pile/... are paths from the repository root
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: a dry run must not need one
    checked = 0
    for command in [line for block in readme_blocks("### Scale out") for line in block]:
        launch = scale_out_launch(command)
        if launch is not None:
            config, overrides, ranks = launch
            cfg = load_run_config(config, overrides)
            check_before_start(cfg, ranks, command)
            checked += 1
        elif command.startswith("metastate submit"):
            words = shlex.split(command, comments=True)
            assert "--dry-run" in words, command
            assert main(words[1:]) == 0, capsys.readouterr().err
            checked += 1
    assert checked >= 5
