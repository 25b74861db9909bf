"""Tensor-parallel config rules (launch/config_checks.py): every width that tp splits must split
into whole heads per rank, found when the config is loaded, before anything starts."""

import pytest

from launch.run_config import ConfigError, load_run_config


@pytest.mark.parametrize("overrides, expected", [
    # demo: d_model 128, head_size 32 -> 4 state heads
    (["parallel.tp=3"], "parallel.tp (3) must divide the 4 state heads"),
    (["parallel.tp=8"], "parallel.tp (8) must divide the 4 state heads"),
    (["parallel.tp=3", "model.d_state=512"], "parallel.tp (3) must divide the 16 state heads"),
    (["parallel.tp=2", "model.out_norm=full"], "parallel.tp (2) needs model.out_norm=head"),
    (["parallel.tp=2", "model.family=transformer", "model.d_model=96"],
     "parallel.tp (2) must divide the 3 attention heads"),
    (["parallel.tp=2", "model.family=transformer", "model.d_model=64", "model.ffn_dim=35"],
     "parallel.tp (2) must divide the 35 transformer FFN channels"),
    (["parallel.tp=4", "model.family=rwkv7", "model.ffn_dim=130"],
     "parallel.tp (4) must divide the 130 rwkv7 FFN channels"),
    (["parallel.tp=2", "parallel.backend=deepspeed"],
     "parallel.tp must be 1 with parallel.backend=deepspeed"),
])
def test_tp_that_does_not_split_whole_heads_is_a_config_error(overrides, expected):
    with pytest.raises(ConfigError) as caught:
        load_run_config("demo", overrides)
    assert expected in str(caught.value)


@pytest.mark.parametrize("overrides", [
    ["parallel.tp=4"],
    ["parallel.tp=2", "model.family=rwkv7"],
    ["parallel.tp=2", "model.family=transformer"],
    ["parallel.tp=2", "model.d_state=256"],
])
def test_tp_that_splits_whole_heads_loads(overrides):
    assert load_run_config("demo", overrides).parallel.tp == int(overrides[0].split("=")[1])
