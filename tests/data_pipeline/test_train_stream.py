"""Sample order, rank/worker splitting and exact resume of the training stream."""

import itertools
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.permutation import permute
from data_pipeline.stats import DataError
from data_pipeline.train_stream import build_train_stream

BATCH = 4


def _run(cfg, world_size, batch=BATCH, state=None, steps=None):
    """Lockstep run of all ranks: per step, the sample ids of every rank; plus final streams."""
    streams = [build_train_stream(cfg, rank, world_size, batch, max_epochs=1)
               for rank in range(world_size)]
    if state is not None:
        for stream in streams:
            stream.load_state_dict(state)
    iterators = [iter(s) for s in streams]
    seen, tokens = [], {}
    for _ in range(steps) if steps is not None else itertools.count():
        step = []
        for iterator in iterators:
            batch_ = next(iterator, None)
            if batch_ is not None:
                step += batch_["sample_ids"].tolist()
                tokens.update(zip(batch_["sample_ids"].tolist(), batch_["tokens"], strict=True))
        if not step:
            break
        seen.append(step)
    return seen, tokens, streams


def _full_state(streams):
    if hasattr(streams[0], "combine_rank_states"):
        return streams[0].combine_rank_states([s.rank_state() for s in streams])
    states = [s.state_dict() for s in streams]
    assert all(s == states[0] for s in states), "indexed state must be identical on every rank"
    return states[0]


def test_permutation_is_a_pure_bijection():
    for n in (1, 2, 7, 255, 256, 1000, 4097):
        image = permute(np.arange(n), n, seed=3, epoch=1)
        assert sorted(image.tolist()) == list(range(n))
        np.testing.assert_array_equal(image, permute(np.arange(n), n, seed=3, epoch=1))
    assert not np.array_equal(permute(np.arange(1000), 1000, 3, 0),
                              permute(np.arange(1000), 1000, 3, 1))
    assert not np.array_equal(permute(np.arange(1000), 1000, 3, 0),
                              permute(np.arange(1000), 1000, 4, 0))
    big = 150_000_000
    picked = np.array([0, 1, 12345, big - 1])
    assert len(set(permute(picked, big, 1, 0).tolist())) == 4


@pytest.mark.parametrize("fmt", ["megatron", "wds", "jsonl"])
def test_two_ranks_two_workers_see_every_sample_once_per_epoch(fmt, tiny_cfg, preprocessed):
    path = {"jsonl": None, **{k: str(v / "train") for k, v in preprocessed.items()}}[fmt]
    cfg = tiny_cfg(format=fmt, num_workers=2, **({"train_path": path} if path else {}))
    seen, tokens, streams = _run(cfg, world_size=2)
    ids = [i for step in seen for i in step]
    assert len(ids) == len(set(ids)), "a sample was delivered twice within the epoch"
    if fmt != "jsonl":
        assert sorted(ids) == list(range(streams[0].samples_per_epoch)), "a sample was lost"
    assert all(t.shape == (cfg.seq_len + 1,) for t in tokens.values())
    assert len(ids) > 1000


def test_megatron_and_wds_streams_are_identical(tiny_cfg, preprocessed):
    batches = {}
    for fmt in ("megatron", "wds"):
        cfg = tiny_cfg(format=fmt, train_path=str(preprocessed[fmt] / "train"))
        batches[fmt] = list(itertools.islice(iter(build_train_stream(cfg, 0, 1, 8)), 20))
    for a, b in zip(batches["megatron"], batches["wds"], strict=True):
        assert a["tokens"].equal(b["tokens"]) and a["sample_ids"].equal(b["sample_ids"])


@pytest.mark.parametrize("fmt", ["megatron", "jsonl"])
@pytest.mark.parametrize("new_world, new_workers", [(1, 0), (3, 1)])
def test_resume_with_another_world_size_and_worker_count_is_exact(
        fmt, new_world, new_workers, tiny_cfg, preprocessed):
    train_path = {"train_path": str(preprocessed["megatron"] / "train")} if fmt != "jsonl" else {}
    cfg = tiny_cfg(format=fmt, num_workers=2, **train_path)
    full, full_tokens, _ = _run(cfg, world_size=2)
    k = 7
    head, _, streams = _run(cfg, world_size=2, steps=k)
    assert head == full[:k]
    state = _full_state(streams)
    assert state["consumed_samples"] == k * 2 * BATCH
    resumed_cfg = tiny_cfg(format=fmt, num_workers=new_workers, **train_path)
    tail, tail_tokens, _ = _run(resumed_cfg, world_size=new_world, state=state)
    remaining = {i for step in full[k:] for i in step}
    resumed = [i for step in tail for i in step]
    assert len(resumed) == len(set(resumed))
    assert set(resumed) == remaining
    for sample in resumed:
        assert tail_tokens[sample].equal(full_tokens[sample])


def test_a_preprocess_output_directory_means_its_train_split(preprocessed):
    from data_pipeline.token_corpus import find_token_shards

    shards = find_token_shards(preprocessed["megatron"], "megatron")
    assert [Path(s).name for s in shards] == ["00", "01", "02", "03"]
    assert all(Path(s).parent.name == "train" for s in shards)


def test_a_pile_root_directory_means_its_train_split(tiny_cfg, tiny_corpus):
    stream = build_train_stream(tiny_cfg(train_path=str(tiny_corpus)), 0, 1, 2)
    assert [Path(p).parent.name for p in stream.paths] == ["train"] * 4


def test_indexed_order_is_a_pure_function_of_the_global_index(tiny_cfg, preprocessed):
    cfg = tiny_cfg(format="megatron", train_path=str(preprocessed["megatron"] / "train"))
    one_rank = [b["sample_ids"].tolist() for b in itertools.islice(
        iter(build_train_stream(cfg, 0, 1, 2 * BATCH)), 10)]
    two_ranks, _, _ = _run(cfg, world_size=2, steps=10)
    assert one_rank == two_ranks


def test_indexed_stream_continues_into_the_next_epoch_with_a_new_order(tiny_cfg, preprocessed):
    cfg = tiny_cfg(format="megatron", train_path=str(preprocessed["megatron"] / "train"),
                   seq_len=512)
    stream = build_train_stream(cfg, 0, 1, 16)
    per_epoch = stream.samples_per_epoch
    ids = [i for b in itertools.islice(iter(stream), 2 * per_epoch // 16 + 1)
           for i in b["sample_ids"].tolist()]
    first, second = ids[:per_epoch], ids[per_epoch:2 * per_epoch]
    assert sorted(first) == list(range(per_epoch))
    assert sorted(second) == list(range(per_epoch, 2 * per_epoch))
    assert [i - per_epoch for i in second] != first
    assert stream.state_dict()["epoch"] >= 2


def test_loading_a_state_from_another_dataset_is_a_clear_error(tiny_cfg, preprocessed):
    cfg = tiny_cfg(format="megatron", train_path=str(preprocessed["megatron"] / "train"))
    state = build_train_stream(cfg, 0, 1, 2).state_dict()
    with pytest.raises(DataError, match="seq_len"):
        build_train_stream(tiny_cfg(format="megatron", train_path=cfg.train_path, seq_len=32),
                           0, 1, 2).load_state_dict(state)
    with pytest.raises(DataError, match="format"):
        build_train_stream(tiny_cfg(), 0, 1, 2).load_state_dict(state)


def test_raw_stream_needs_a_shard_per_reader(tiny_cfg):
    with pytest.raises(DataError, match="4 shards"):
        build_train_stream(tiny_cfg(num_workers=3), rank=0, world_size=2, micro_batch_size=2)


def test_raw_windows_pack_documents_with_eos_between_them(tiny_cfg, tiny_corpus):
    from data_pipeline.jsonl_reader import iter_documents
    from data_pipeline.stats import StreamStats
    from data_pipeline.tokenizer import load_tokenizer

    cfg = tiny_cfg(train_path=str(tiny_corpus / "train" / "00.jsonl.zst"))
    tokenizer = load_tokenizer()
    stream = np.concatenate([tokenizer.encode_document(d.text) for d in iter_documents(
        cfg.train_path, StreamStats())]).astype(np.int64)
    batches = list(itertools.islice(iter(build_train_stream(cfg, 0, 1, 4)), 5))
    windows = np.concatenate([b["tokens"].numpy() for b in batches])
    L = cfg.seq_len
    for index, window in enumerate(windows):
        np.testing.assert_array_equal(window, stream[index * L: index * L + L + 1])
