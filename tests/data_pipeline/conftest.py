import json
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from data_pipeline.config import DataConfig
from data_pipeline.jsonl_reader import iter_documents
from data_pipeline.preprocess import preprocess
from data_pipeline.stats import StreamStats

REPO = Path(__file__).resolve().parents[2]
EMBEDDED_VAL = REPO / "data" / "embedded" / "val.jsonl.zst"
TRAIN_SHARDS = 4


def write_jsonl_zst(path: Path, lines: list, checksum: bool = True) -> Path:
    """Write records (dicts) or raw lines (bytes) as one zstd frame; returns the path."""
    payload = b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n"
                       for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor(write_checksum=checksum).compress(payload))
    return path


def record(text: str, name: str = "PythonDocs") -> dict:
    return {"text": text, "meta": {"pile_set_name": name}}


@pytest.fixture(scope="session")
def real_paragraphs() -> list[tuple[str, str]]:
    """(text, pile_set_name) of the real paragraphs (~520k characters) from the embedded validation file."""
    pieces = []
    for document in iter_documents(str(EMBEDDED_VAL), StreamStats()):
        for paragraph in document.text.split("\n\n"):
            if paragraph.strip():
                pieces.append((paragraph, document.pile_set_name))
    return pieces


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, real_paragraphs) -> Path:
    """A Pile-layout corpus (train/00..03, val, test) of real text, about 100k tokens."""
    root = tmp_path_factory.mktemp("corpus")
    shards = [[] for _ in range(TRAIN_SHARDS)]
    held_out = []
    for index, (text, name) in enumerate(real_paragraphs):
        if index % 20 == 0:
            held_out.append(record(text, name))
        else:
            shards[index % TRAIN_SHARDS].append(record(text, name))
    for number, lines in enumerate(shards):
        write_jsonl_zst(root / "train" / f"{number:02d}.jsonl.zst", lines)
    write_jsonl_zst(root / "val.jsonl.zst", held_out[::2])
    write_jsonl_zst(root / "test.jsonl.zst", held_out[1::2])
    return root


@pytest.fixture(scope="session")
def preprocessed(tmp_path_factory, tiny_corpus) -> dict[str, Path]:
    """The tiny corpus preprocessed to both formats (small wds chunks: several per tar)."""
    out = {}
    for fmt in ("megatron", "wds"):
        out[fmt] = tmp_path_factory.mktemp(fmt)
        preprocess(str(tiny_corpus), str(out[fmt]), fmt, workers=1, chunk_tokens=4096,
                   progress=False)
    return out


@pytest.fixture
def tiny_cfg(tiny_corpus):
    def make(**overrides) -> DataConfig:
        base = DataConfig(train_path=str(tiny_corpus / "train"),
                          val_path=str(tiny_corpus / "val.jsonl.zst"),
                          test_path=str(tiny_corpus / "test.jsonl.zst"), seq_len=64, seed=7)
        return replace(base, **overrides)
    return make


@pytest.fixture
def write_shard():
    """write_shard(path, lines, checksum=True): a jsonl.zst of dict records or raw byte lines."""
    return write_jsonl_zst


@pytest.fixture
def make_record():
    return record
