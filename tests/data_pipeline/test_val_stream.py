"""Validation stream and the embedded default corpus."""

from pathlib import Path

import pytest

from data_pipeline.config import DataConfig
from data_pipeline.jsonl_reader import expand_paths, iter_documents
from data_pipeline.stats import StreamStats
from data_pipeline.tokenizer import load_tokenizer
from data_pipeline.train_stream import build_train_stream
from data_pipeline.val_stream import build_val_stream

REPO = Path(__file__).resolve().parents[2]


def test_val_stream_yields_whole_tagged_documents_deterministically(tiny_cfg):
    cfg = tiny_cfg()
    docs = list(build_val_stream(cfg, "val"))
    again = list(build_val_stream(cfg, "val"))
    source = list(iter_documents(cfg.val_path, StreamStats()))
    tokenizer = load_tokenizer()
    assert [d["doc_index"] for d in docs] == list(range(len(source)))
    for doc, original, repeat in zip(docs, source, again, strict=True):
        assert doc["tokens"].tolist() == tokenizer.encode_document(original.text).tolist()
        assert doc["tokens"][-1] == 0
        assert doc["pile_set_name"] == original.pile_set_name
        assert doc["tokens"].equal(repeat["tokens"])
    assert len({d["pile_set_name"] for d in docs}) > 1


def test_val_stream_splits_documents_across_ranks_and_caps_tokens(tiny_cfg):
    cfg = tiny_cfg()
    everything = [d["doc_index"] for d in build_val_stream(cfg, "test")]
    parts = [[d["doc_index"] for d in build_val_stream(cfg, "test", rank=r, world_size=3)]
             for r in range(3)]
    assert sorted(sum(parts, [])) == everything
    capped = build_val_stream(cfg, "test", max_tokens=100)
    assert len(list(capped)) < len(everything) and capped.stats["tokens"] >= 100
    with pytest.raises(ValueError, match="val | test"):
        build_val_stream(cfg, "train")


def test_embedded_default_corpus_is_small_and_complete():
    cfg = DataConfig()
    files = expand_paths(cfg.train_path) + expand_paths(cfg.val_path) + expand_paths(cfg.test_path)
    assert len(files) == 6 and all(Path(f).is_file() for f in files)
    assert sum(Path(f).stat().st_size for f in files) <= 5_000_000
    assert (REPO / "data" / "README.md").read_text().count("Apache-2.0") >= 1


def test_default_config_trains_and_evaluates_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                 # relative defaults resolve under the repo root
    cfg = DataConfig()
    batch = next(iter(build_train_stream(cfg, 0, 1, 2)))
    assert batch["tokens"].shape == (2, cfg.seq_len + 1)
    assert int(batch["tokens"].max()) < 50277
    first = next(iter(build_val_stream(cfg)))
    assert first["pile_set_name"] and first["tokens"][-1] == 0
