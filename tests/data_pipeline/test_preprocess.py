"""`metastate preprocess`: round trip, manifest, parallel determinism, CLI."""

import json

import numpy as np
import pytest

from data_pipeline.jsonl_reader import expand_paths, iter_documents
from data_pipeline.megatron_format import MegatronShard
from data_pipeline.stats import StreamStats
from data_pipeline.tokenizer import load_tokenizer
from data_pipeline.wds_format import WdsShard
from launch.cli import main


def _expected(corpus, relative):
    tokenizer = load_tokenizer()
    docs = list(iter_documents(str(corpus / relative), StreamStats()))
    return [tokenizer.encode_document(d.text) for d in docs], [d.pile_set_name for d in docs]


@pytest.mark.parametrize("fmt", ["megatron", "wds"])
def test_round_trip_restores_every_document(fmt, tiny_corpus, preprocessed):
    out = preprocessed[fmt]
    for relative in ("train/00.jsonl.zst", "train/03.jsonl.zst", "val.jsonl.zst"):
        expected, _ = _expected(tiny_corpus, relative)
        stem = relative[: -len(".jsonl.zst")]
        if fmt == "megatron":
            shard = MegatronShard(out / stem)
            got = [shard.document(i) for i in range(len(shard))]
        else:
            tokens = np.concatenate(WdsShard(out / f"{stem}.tar").chunks)
            got = np.split(tokens, np.cumsum([len(e) for e in expected])[:-1])
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)


def test_manifest_counts_tokens_per_split_and_subset(tiny_corpus, preprocessed):
    manifest = json.loads((preprocessed["megatron"] / "manifest.json").read_text())
    assert manifest["tokenizer"]["sha256"] == load_tokenizer().sha256
    assert manifest["tokenizer"]["padded_vocab_size"] == 50304
    assert set(manifest["splits"]) == {"train", "val", "test"}
    tokens, documents = {}, {}
    for path in expand_paths(str(tiny_corpus / "train")):
        expected, names = _expected(tiny_corpus, path)
        for ids, name in zip(expected, names, strict=True):
            tokens[name] = tokens.get(name, 0) + len(ids)
            documents[name] = documents.get(name, 0) + 1
    train = manifest["splits"]["train"]
    assert {k: v["tokens"] for k, v in train["by_pile_set_name"].items()} == tokens
    assert {k: v["documents"] for k, v in train["by_pile_set_name"].items()} == documents
    assert train["tokens"] == sum(tokens.values())
    shards = [s for s in manifest["shards"] if s["split"] == "train"]
    assert sum(s["tokens"] for s in shards) == train["tokens"] and len(shards) == 4


def test_cli_with_workers_matches_the_serial_run_and_counts_bad_lines(
        tmp_path, tiny_corpus, preprocessed, write_shard, make_record, capsys):
    bad = write_shard(tmp_path / "in" / "train" / "00.jsonl.zst",
                      [make_record("fine text"), b"not json", b'{"text": ""}'])
    code = main(["preprocess", "--input", str(tiny_corpus), "--output", str(tmp_path / "par"),
                 "--format", "megatron", "--workers", "2", "--no-progress"])
    assert code == 0 and "manifest.json" in capsys.readouterr().out
    serial = json.loads((preprocessed["megatron"] / "manifest.json").read_text())
    parallel = json.loads((tmp_path / "par" / "manifest.json").read_text())
    assert parallel["splits"] == serial["splits"]
    for relative in ("train/00", "train/02", "test"):
        for suffix in (".bin", ".idx"):
            assert ((tmp_path / "par" / (relative + suffix)).read_bytes()
                    == (preprocessed["megatron"] / (relative + suffix)).read_bytes())
    assert main(["preprocess", "--input", str(bad), "--output", str(tmp_path / "bad"),
                 "--format", "wds", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    assert manifest["skipped"] == {"bad_json_lines": 1, "empty_text_lines": 1}
    assert manifest["splits"]["train"]["documents"] == 1


def test_cli_reports_unusable_input_in_one_line(tmp_path, write_shard, capsys):
    write_shard(tmp_path / "junk.jsonl.zst", [b"junk", b"more junk"])
    code = main(["preprocess", "--input", str(tmp_path / "junk.jsonl.zst"), "--output",
                 str(tmp_path / "out"), "--format", "megatron", "--no-progress"])
    error = capsys.readouterr().err
    assert code == 2 and "junk.jsonl.zst" in error and error.count("\n") == 1
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert main(["preprocess", "--input", str(tmp_path / "nothing*.zst"), "--output",
                 str(tmp_path / "out"), "--format", "wds", "--no-progress"]) == 2
    assert "matches no files" in capsys.readouterr().err
