"""`metastate --help` and the config commands answer without importing torch (a torch import
costs seconds; a login node checks configs many times)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code` in the repository."""
    script = f"{code}\nimport sys\nprint(' '.join(sys.modules))"
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(proc.stdout.split())


@pytest.mark.parametrize("code", [
    "import launch.cli",
    "import launch.cli\nlaunch.cli.build_parser()",                        # every command registered
    "from launch.cli import main\nmain(['config', 'show', 'demo', 'train.steps=3'])",
    "from launch.cli import main\nmain(['config', 'list'])",
])
def test_command_line_and_config_commands_do_not_import_torch(code):
    assert "torch" not in modules_after(code)


def test_the_check_itself_sees_torch():
    # the property above is only worth something if a torch import would show
    assert "torch" in modules_after("from launch.cli import main\nmain(['model', 'info', 'rwkv7-tiny'])")
