"""ParallelLayout: planned without torch from the parallel section and the world size."""

import pytest
from omegaconf import OmegaConf

from training.config import ParallelConfig
from training.layout import plan_layout


def parallel(**values):
    return OmegaConf.structured(ParallelConfig(**values))


def test_ranks_of_a_tp_group_are_neighbours_and_share_a_data_parallel_index():
    layouts = [plan_layout(parallel(tp=2, backend="fsdp2"), 8, rank) for rank in range(8)]
    assert {(layout.dp_size, layout.tp_size, layout.world_size) for layout in layouts} == {(4, 2, 8)}
    assert [layout.dp_rank for layout in layouts] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [layout.tp_rank for layout in layouts] == [0, 1] * 4
    assert layouts[0].mesh is None and layouts[0].dp_mesh is None  # no mesh before with_mesh


def test_explicit_dp_must_match_the_world():
    assert plan_layout(parallel(dp=3), 3).dp_size == 3
    with pytest.raises(ValueError, match=r"parallel.tp=1 x parallel.dp=2 = 2 differs from the world size 3"):
        plan_layout(parallel(dp=2), 3)


def test_without_tp_or_fsdp2_no_mesh_is_built():
    layout = plan_layout(parallel(backend="none"), 1)
    assert layout.with_mesh("cpu") is layout
