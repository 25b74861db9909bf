"""Every kind of bad input is skipped with a counted warning; only nothing-valid is an error."""

import hashlib

import pytest
import zstandard

from data_pipeline.jsonl_reader import iter_documents
from data_pipeline.stats import DataError, StreamStats
from data_pipeline.train_stream import build_train_stream
from data_pipeline.val_stream import ValStream


def _texts(path, stats=None):
    return [d.text for d in iter_documents(str(path), stats if stats is not None else StreamStats())]


def test_truncated_shard_keeps_complete_documents_and_counts_it(tmp_path, write_shard, make_record):
    texts = [hashlib.sha256(str(i).encode()).hexdigest() * 8 for i in range(2000)]
    path = write_shard(tmp_path / "t.jsonl.zst", [make_record(t) for t in texts])
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    stats = StreamStats()
    read = _texts(path, stats)
    assert 0 < len(read) < 2000
    assert read == texts[: len(read)]
    assert stats["truncated_shards"] == 1 and stats["bad_json_lines"] == 0


def test_corrupt_shard_is_counted_not_raised(tmp_path, write_shard, make_record):
    path = write_shard(tmp_path / "c.jsonl.zst", [make_record(f"document number {i}") for i in
                                                  range(2000)])
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2: len(blob) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(blob))
    stats = StreamStats()
    texts = _texts(path, stats)
    assert stats["corrupt_shards"] == 1
    assert len(texts) < 2000


def test_not_zstd_at_all_is_a_corrupt_shard(tmp_path):
    path = tmp_path / "plain.jsonl.zst"
    path.write_bytes(b'{"text": "not compressed"}\n')
    stats = StreamStats()
    assert _texts(path, stats) == [] and stats["corrupt_shards"] == 1


@pytest.mark.parametrize("bad_line, kind", [
    (b"this is not json", "bad_json_lines"),
    (b'{"meta": {"pile_set_name": "X"}}', "missing_text_lines"),
    (b'{"text": 17}', "missing_text_lines"),
    (b'["a", "list"]', "missing_text_lines"),
    (b'{"text": ""}', "empty_text_lines"),
    (b'{"text": "caf\xe9 latin-1"}', "invalid_utf8_lines"),
])
def test_bad_lines_are_skipped_and_counted(tmp_path, write_shard, make_record, bad_line, kind):
    lines = [make_record("first"), bad_line, make_record("second"), bad_line]
    path = write_shard(tmp_path / "b.jsonl.zst", lines)
    stats = StreamStats()
    documents = list(iter_documents(str(path), stats))
    assert [d.text for d in documents] == ["first", "second"]
    assert [d.line for d in documents] == [0, 2]
    assert stats[kind] == 2 and stats.skipped == 2 and stats["documents"] == 2


def test_lone_surrogate_is_counted_as_invalid_utf8_by_the_streams(tmp_path, write_shard,
                                                                  make_record):
    path = write_shard(tmp_path / "val.jsonl.zst",
                       [make_record("good text"), b'{"text": "bad \\ud800 surrogate"}',
                        b'{"text": "a valid pair \\ud83d\\ude00 is kept"}'])
    stream = ValStream([str(path)])
    assert [d["doc_index"] for d in stream] == [0, 1]
    assert stream.stats["invalid_utf8_lines"] == 1


def test_missing_shard_is_counted_and_the_rest_is_read(tmp_path, write_shard, make_record,
                                                       tiny_cfg):
    good = write_shard(tmp_path / "train" / "01.jsonl.zst",
                       [make_record("word " * 300) for _ in range(4)])
    missing = tmp_path / "train" / "00.jsonl.zst"
    stream = ValStream([str(missing), str(good)])
    assert len(list(stream)) == 4 and stream.stats["missing_shards"] == 1
    cfg = tiny_cfg(train_path=str(tmp_path / "train" / "0[01].jsonl.zst"))
    train = build_train_stream(cfg, micro_batch_size=2, max_epochs=1)
    assert len(train.paths) == 1


def test_train_stream_names_the_file_when_nothing_valid_remains(tmp_path, write_shard, tiny_cfg):
    write_shard(tmp_path / "train" / "00.jsonl.zst", [b"garbage", b'{"text": ""}'])
    stream = build_train_stream(tiny_cfg(train_path=str(tmp_path / "train")), micro_batch_size=2)
    with pytest.raises(DataError, match="00.jsonl.zst"):
        next(iter(stream))


def test_val_stream_names_the_file_when_every_shard_is_missing(tmp_path):
    with pytest.raises(DataError, match="gone.jsonl.zst"):
        list(ValStream([str(tmp_path / "gone.jsonl.zst")]))


def test_resume_from_a_line_skips_without_parsing(tmp_path, write_shard, make_record):
    lines = [make_record(f"doc {i}") for i in range(50)]
    lines[10] = b"not json"                 # bad lines before the resume point are not re-counted
    path = write_shard(tmp_path / "r.jsonl.zst", lines)
    stats = StreamStats()
    resumed = list(iter_documents(str(path), stats, start_line=30))
    assert [d.line for d in resumed] == list(range(30, 50))
    assert stats.skipped == 0


def test_multi_frame_shards_are_read_across_frames(tmp_path):
    path = tmp_path / "frames.jsonl.zst"
    frames = [zstandard.ZstdCompressor().compress(b'{"text": "frame %d"}\n' % i) for i in range(3)]
    path.write_bytes(b"".join(frames))
    stats = StreamStats()
    assert _texts(path, stats) == ["frame 0", "frame 1", "frame 2"]
    assert stats.skipped == 0


def test_a_bad_shard_after_resume_does_not_hide_a_good_one(tmp_path, write_shard, make_record,
                                                           tiny_cfg):
    write_shard(tmp_path / "train" / "00.jsonl.zst", [make_record("word " * 400)])
    write_shard(tmp_path / "train" / "01.jsonl.zst", [b"garbage"])
    cfg = tiny_cfg(train_path=str(tmp_path / "train"))
    stream = build_train_stream(cfg, micro_batch_size=1, max_epochs=2)
    state = stream.state_dict()
    state["shards"]["00.jsonl.zst"] = {"epoch": 1, "line": 0, "token": 0, "windows": 0}
    stream.load_state_dict(state)
    batches = list(stream)
    assert len(batches) == (400 + 1 - 1) // cfg.seq_len
    assert stream.stats["bad_json_lines"] == 2     # the bad shard, read in both epochs
    assert stream.state_dict()["shards"]["00.jsonl.zst"]["epoch"] == 2   # both epochs done
