"""Megatron .bin/.idx and WebDataset shards: compatibility with megatron-core and webdataset."""

import warnings

import numpy as np
import pytest

from data_pipeline.megatron_format import MegatronShard, MegatronShardWriter, ShardFormatError
from data_pipeline.stats import DataError, StreamStats
from data_pipeline.token_corpus import TokenCorpus, find_token_shards
from data_pipeline.wds_format import WdsShard, WdsShardWriter


@pytest.fixture(scope="module")
def megatron_core_indexed():
    with warnings.catch_warnings():           # megatron-core warns that apex/TE are absent
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


@pytest.fixture
def documents():
    rng = np.random.default_rng(0)
    return [rng.integers(1, 50277, size=n).astype(np.uint16) for n in (5, 1, 300, 17, 4096, 2)]


def test_files_written_by_megatron_core_read_back_identically(tmp_path, megatron_core_indexed,
                                                              documents):
    prefix = str(tmp_path / "core")
    builder = megatron_core_indexed.IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for doc in documents:
        builder.add_document(doc, [len(doc)])
    builder.finalize(prefix + ".idx")
    shard = MegatronShard(prefix)
    assert len(shard) == len(documents)
    for index, doc in enumerate(documents):
        np.testing.assert_array_equal(shard.document(index), doc)
    np.testing.assert_array_equal(np.asarray(shard.tokens), np.concatenate(documents))


def test_our_writer_is_byte_identical_to_megatron_core(tmp_path, megatron_core_indexed, documents):
    ours, core = str(tmp_path / "ours"), str(tmp_path / "core")
    writer = MegatronShardWriter(ours)
    builder = megatron_core_indexed.IndexedDatasetBuilder(core + ".bin", dtype=np.uint16)
    for doc in documents:
        writer.add_document(doc)
        builder.add_document(doc, [len(doc)])
    assert writer.finalize() == sum(len(d) for d in documents)
    builder.finalize(core + ".idx")
    for suffix in (".bin", ".idx"):
        assert open(ours + suffix, "rb").read() == open(core + suffix, "rb").read()
    dataset = megatron_core_indexed.IndexedDataset(ours)
    for index, doc in enumerate(documents):
        np.testing.assert_array_equal(dataset[index], doc)


def _write(prefix, docs):
    writer = MegatronShardWriter(prefix)
    for doc in docs:
        writer.add_document(doc)
    writer.finalize()


def test_idx_disagreeing_with_bin_is_skipped_and_counted(tmp_path, documents):
    _write(tmp_path / "a", documents[:3])
    _write(tmp_path / "b", documents[3:])
    with open(tmp_path / "a.bin", "ab") as handle:
        handle.write(b"\x00\x00")                     # one stray token: sizes disagree
    with pytest.raises(ShardFormatError, match="a.bin"):
        MegatronShard(tmp_path / "a")
    stats = StreamStats()
    corpus = TokenCorpus(find_token_shards(tmp_path, "megatron"), "megatron", stats)
    assert stats["bad_index_files"] == 1
    assert corpus.num_tokens == sum(len(d) for d in documents[3:])
    np.testing.assert_array_equal(corpus.read(0, corpus.num_tokens), np.concatenate(documents[3:]))


def test_truncated_idx_is_rejected(tmp_path, documents):
    _write(tmp_path / "a", documents)
    blob = (tmp_path / "a.idx").read_bytes()
    (tmp_path / "a.idx").write_bytes(blob[:-8])
    with pytest.raises(ShardFormatError, match="a.idx"):
        MegatronShard(tmp_path / "a")


def test_no_valid_shard_is_an_error_naming_it(tmp_path, documents):
    _write(tmp_path / "only", documents)
    (tmp_path / "only.bin").write_bytes(b"")
    with pytest.raises(DataError, match="only"):
        TokenCorpus(find_token_shards(tmp_path, "megatron"), "megatron")


def test_missing_shards_are_counted(tmp_path, documents):
    _write(tmp_path / "a", documents)
    stats = StreamStats()
    corpus = TokenCorpus([str(tmp_path / "a"), str(tmp_path / "gone")], "megatron", stats)
    assert stats["missing_shards"] == 1 and corpus.paths == [str(tmp_path / "a")]


def test_windows_span_shard_boundaries_and_overlap_by_one_token(tmp_path, documents):
    _write(tmp_path / "a", documents[:3])
    _write(tmp_path / "b", documents[3:])
    corpus = TokenCorpus(find_token_shards(tmp_path, "megatron"), "megatron")
    stream = np.concatenate(documents).astype(np.int64)
    seq_len = 100
    assert corpus.num_windows(seq_len) == (len(stream) - 1) // seq_len
    for index in range(corpus.num_windows(seq_len)):
        np.testing.assert_array_equal(corpus.window(index, seq_len),
                                      stream[index * seq_len: index * seq_len + seq_len + 1])


def test_wds_shards_stream_through_webdataset_and_memmap_back(tmp_path, documents):
    import webdataset

    writer = WdsShardWriter(tmp_path / "00.tar", chunk_tokens=400)
    names = [f"set{i % 2}" for i in range(len(documents))]
    for doc, name in zip(documents, names, strict=True):
        writer.add_document(doc, name)
    assert writer.finalize() == sum(len(d) for d in documents)
    samples = list(webdataset.WebDataset(str(tmp_path / "00.tar"), shardshuffle=False).decode())
    assert len(samples) > 1
    tokens = np.concatenate([s["tokens.npy"] for s in samples])
    np.testing.assert_array_equal(tokens, np.concatenate(documents))
    lengths = np.concatenate([s["doclens.npy"] for s in samples])
    assert lengths.tolist() == [len(d) for d in documents]
    assert sum((s["json"]["pile_set_name"] for s in samples), []) == names
    shard = WdsShard(tmp_path / "00.tar")
    np.testing.assert_array_equal(np.concatenate(shard.chunks), np.concatenate(documents))


def test_truncated_wds_tar_is_skipped_and_counted(tmp_path, documents):
    for name in ("a", "b"):
        writer = WdsShardWriter(tmp_path / f"{name}.tar", chunk_tokens=400)
        for doc in documents:
            writer.add_document(doc, "x")
        writer.finalize()
    blob = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "a.tar").write_bytes(blob[: len(blob) // 2])
    stats = StreamStats()
    corpus = TokenCorpus(find_token_shards(tmp_path, "wds"), "wds", stats)
    assert stats["bad_index_files"] == 1
    assert corpus.paths == [str(tmp_path / "b.tar")]
