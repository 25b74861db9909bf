"""`metastate preprocess`: tokenize a Pile-format corpus into Megatron or WebDataset shards.

One output shard per input shard, same relative layout (`corpus/train/00.jsonl.zst` ->
`OUT/train/00.bin/.idx` or `OUT/train/00.tar`). The main process decompresses and writes; a
pool of `workers` processes parses and tokenizes batches of lines, in order, so the output is
identical for any worker count. `OUT/manifest.json` (written last: its presence means the run
finished) records token and document counts per split and per `pile_set_name`, the skipped
input, and the tokenizer's sha256.
"""

import json
import multiprocessing
import os
from collections import Counter, defaultdict, deque
from pathlib import Path

import numpy as np

from data_pipeline.config import PRETOKENIZED_FORMATS
from data_pipeline.jsonl_reader import expand_paths, iter_lines, parse_line
from data_pipeline.megatron_format import MegatronShardWriter
from data_pipeline.stats import DataError, StreamStats
from data_pipeline.tokenizer import TOKEN_DTYPE, load_tokenizer
from data_pipeline.wds_format import DEFAULT_CHUNK_TOKENS, WdsShardWriter

OUTPUT_FORMATS = PRETOKENIZED_FORMATS
SPLIT_NAMES = ("train", "val", "test")
MANIFEST = "manifest.json"
_BATCH_BYTES = 1 << 20         # text per job: small enough to balance a few shards over workers
_worker_tokenizer = None


def _output_layout(paths: list[str]) -> list[tuple[str, str]]:
    """(relative output stem, split) per input file."""
    if len(paths) == 1:
        relatives = [Path(os.path.basename(paths[0]))]
    else:
        root = os.path.commonpath([os.path.abspath(p) for p in paths])
        relatives = [Path(os.path.relpath(os.path.abspath(p), root)) for p in paths]
    layout = []
    for relative in relatives:
        stem = str(relative)[: -len(".jsonl.zst")] if str(relative).endswith(".jsonl.zst") \
            else str(relative.with_suffix(""))
        first = relative.parts[0] if len(relative.parts) > 1 else stem
        layout.append((stem, first if first in SPLIT_NAMES else "train"))
    return layout


def _init_worker(backend: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(backend)


def _tokenize_lines(job: tuple[int, str, list[tuple[int, bytes]]]) -> tuple[int, list, dict]:
    """Parse and tokenize one batch of lines; returns (file index, [(ids, set name)], skips)."""
    index, path, lines = job
    stats = StreamStats()
    documents = []
    for number, raw in lines:
        document = parse_line(raw, path, number, stats)
        if document is None:
            continue
        try:
            ids = _worker_tokenizer.encode_document(document.text)
        except (UnicodeEncodeError, ValueError):
            stats.warn("invalid_utf8_lines", path, f"line {number + 1} is not encodable as UTF-8")
            continue
        documents.append((ids, document.pile_set_name))
    return index, documents, stats.as_dict()


def _line_batches(paths: list[str], stats: StreamStats, on_read):
    """(file index, path, [(line, raw)...]) batches of about 1 MB of text, files in order."""
    for index, path in enumerate(paths):
        batch, size = [], 0
        for number, raw in iter_lines(path, stats, on_read=on_read):
            batch.append((number, raw))
            size += len(raw)
            if size >= _BATCH_BYTES:
                yield index, path, batch
                batch, size = [], 0
        yield index, path, batch      # possibly empty: marks the file as finished


def preprocess(inputs: str, output: str, fmt: str = "megatron", workers: int = 1,
               tokenizer_backend: str = "tiktoken", chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
               progress: bool = True) -> dict:
    """Tokenize Pile-format `jsonl.zst` shards into `output`; returns the manifest.

    Example:
        >>> preprocess("/data/pile", "/data/pile-megatron", fmt="megatron", workers=16)
        then train with data.format=megatron data.train_path=/data/pile-megatron/train
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"--format must be one of {' | '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    paths = expand_paths(inputs, what="--input")
    layout = _output_layout(paths)
    tokenizer = load_tokenizer(tokenizer_backend)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    stats = StreamStats()
    bar = _progress_bar(paths, progress)
    batches = _line_batches(paths, stats, bar.update if bar is not None else None)
    shards = [{"input": p, "output": "", "split": split, "documents": 0, "tokens": 0}
              for p, (_, split) in zip(paths, layout, strict=True)]
    per_set: dict = defaultdict(lambda: defaultdict(Counter))
    writer, current = None, -1
    pool = (multiprocessing.Pool(workers, _init_worker, (tokenizer_backend,))
            if workers > 1 else None)
    try:
        if pool is None:
            _init_worker(tokenizer_backend)
            results = map(_tokenize_lines, batches)
        else:
            results = _ordered_results(pool, batches, in_flight=4 * workers)
        for index, documents, skipped in results:
            if index != current:
                _finish(writer, shards, current)
                writer, current = _open_writer(out, layout[index][0], fmt, chunk_tokens), index
                shards[index]["output"] = str(writer_path(writer))
            stats.merge(skipped)
            for ids, set_name in documents:
                if fmt == "megatron":
                    writer.add_document(ids)
                else:
                    writer.add_document(ids, set_name)
                shards[index]["documents"] += 1
                shards[index]["tokens"] += len(ids)
                per_set[layout[index][1]][set_name].update(documents=1, tokens=len(ids))
        _finish(writer, shards, current)
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()
    if not any(s["documents"] for s in shards):
        raise DataError(f"no valid documents in {inputs} (skipped: {stats.as_dict()}); expected "
                        f"Pile-format jsonl.zst lines {{\"text\": ..., \"meta\": {{...}}}}")
    manifest = _manifest(fmt, tokenizer, shards, per_set, stats)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _ordered_results(pool, jobs, in_flight: int):
    """pool.imap with back-pressure: imap would read the whole corpus into its task queue."""
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.apply_async(_tokenize_lines, (job,)))
        if len(pending) >= in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def writer_path(writer) -> str:
    return writer.prefix if isinstance(writer, MegatronShardWriter) else writer.path


def _open_writer(out: Path, stem: str, fmt: str, chunk_tokens: int):
    if fmt == "megatron":
        return MegatronShardWriter(out / stem, dtype=TOKEN_DTYPE)
    return WdsShardWriter(out / f"{stem}.tar", chunk_tokens)


def _finish(writer, shards: list[dict], index: int) -> None:
    if writer is not None:
        written = writer.finalize()
        if written != shards[index]["tokens"]:
            raise DataError(f"{writer_path(writer)}: wrote {written} tokens, expected "
                            f"{shards[index]['tokens']}")


def _progress_bar(paths: list[str], enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    total = sum(os.path.getsize(p) for p in paths if os.path.exists(p))
    return tqdm(total=total, unit="B", unit_scale=True, desc="preprocess (compressed input)")


def _manifest(fmt: str, tokenizer, shards: list[dict], per_set: dict, stats: StreamStats) -> dict:
    splits = {}
    for split, sets in sorted(per_set.items()):
        splits[split] = {
            "documents": sum(c["documents"] for c in sets.values()),
            "tokens": sum(c["tokens"] for c in sets.values()),
            "by_pile_set_name": {name: dict(sorted(c.items())) for name, c in sorted(sets.items())},
        }
    return {
        "format": fmt,
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "tokenizer": {"name": tokenizer.name, "sha256": tokenizer.sha256,
                      "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
                      "padded_vocab_size": tokenizer.padded_vocab_size},
        "splits": splits,
        "shards": shards,
        "skipped": stats.as_dict(),
    }
