"""The `ops` section's kernel limits are config errors at load time, not NaN losses at run time."""

import pytest

from launch.run_config import ConfigError, load_run_config

from .test_cli import run_metastate


def test_unsafe_chunk_size_fails_config_show_in_one_line_with_exit_code_2():
    result = run_metastate("config", "show", "demo", "ops.chunk_size=256")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "config error: ops.chunk_size must be a power of two from 1 to 64 (16-64 are fast; larger "
        "chunks overflow fp32 at RWKV-7's strongest decay), got 256 in command-line override "
        "'ops.chunk_size=256'"]


def test_largest_safe_chunk_size_is_accepted():
    result = run_metastate("config", "show", "demo", "ops.chunk_size=64")
    assert result.returncode == 0, result.stderr
    assert "chunk_size: 64" in result.stdout


def test_negative_loss_chunk_size_is_a_config_error_and_zero_is_accepted():
    with pytest.raises(ConfigError, match=r"ops.loss_chunk_size must be >= 0 tokens .* got -1 .*"
                                          r"'ops.loss_chunk_size=-1'"):
        load_run_config("demo", ["ops.loss_chunk_size=-1"])
    assert load_run_config("demo", ["ops.loss_chunk_size=0"]).ops.loss_chunk_size == 0
    assert load_run_config("demo").ops.loss_chunk_size == 1024
