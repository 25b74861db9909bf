"""format=jsonl: state_dict() all-gathers every rank's shard positions (gloo on loopback)."""

import itertools
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist

from data_pipeline.train_stream import build_train_stream

STEPS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world_size, port, cfg, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        stream = build_train_stream(cfg, rank, world_size, 2)
        consumed = list(itertools.islice(iter(stream), STEPS))
        assert len(consumed) == STEPS
        state = stream.state_dict()
        with open(os.path.join(out_dir, f"state{rank}.json"), "w") as handle:
            json.dump(state, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_raw_state_dict_gathers_positions_from_all_ranks(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    torch.multiprocessing.start_processes(_rank_main, args=(2, _free_port(), cfg, str(tmp_path)),
                                          nprocs=2, start_method="fork")
    states = [json.loads((tmp_path / f"state{r}.json").read_text()) for r in range(2)]
    assert states[0] == states[1]
    local = [build_train_stream(cfg, rank, 2, 2) for rank in range(2)]
    for stream in local:
        assert len(list(itertools.islice(iter(stream), STEPS))) == STEPS
    expected = local[0].combine_rank_states([s.rank_state() for s in local])
    assert states[0] == json.loads(json.dumps(expected))
    moved = [k for k, v in expected["shards"].items() if v["windows"]]
    assert len(moved) == 2 and expected["consumed_samples"] == 2 * 2 * STEPS
