"""Data pipeline throughput (tokens/s per process) and the whole-corpus tokenizer check.

    python benchmarks/data_bench.py                              # shared corpus, everything
    python benchmarks/data_bench.py --corpus data/embedded --skip-tokenizer-check   # quick look
    python benchmarks/data_bench.py --write-results /tmp/data_results.md   # then paste into RESULTS.md

Rows (one process each, num_workers=0, so the number is per core):
  (a) raw jsonl.zst -> tokens    decompress + JSON + tiktoken encode + EOS   target >= 0.8M/s
  (a') raw training stream       (a) plus packing into seq_len+1 windows
  (b) .bin/.idx windows          shuffled windows from megatron shards         target >= 20M/s
  (c) wds windows                shuffled windows from WebDataset tar shards
  preprocess                     `metastate preprocess` wall time with --workers, both cores
  resume skip                    rate at which a raw shard is skipped to a saved line (MB of text/s)
The tokenizer check encodes every document of the corpus with tiktoken and HF tokenizers (in
parallel over shards) and counts documents whose ids differ; it must be 0.
"""

import argparse
import itertools
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.config import DataConfig  # noqa: E402
from data_pipeline.jsonl_reader import expand_paths, iter_documents, iter_lines  # noqa: E402
from data_pipeline.preprocess import preprocess  # noqa: E402
from data_pipeline.stats import StreamStats  # noqa: E402
from data_pipeline.tokenizer import load_tokenizer  # noqa: E402
from data_pipeline.train_stream import build_train_stream  # noqa: E402

SHARED_CORPUS = "/work/shared/data/corpus"


def raw_tokens_per_second(paths: list[str]) -> tuple[float, int]:
    tokenizer = load_tokenizer()
    start, tokens = time.perf_counter(), 0
    for path in paths:
        for document in iter_documents(path, StreamStats()):
            tokens += len(tokenizer.encode_document(document.text))
    return tokens / (time.perf_counter() - start), tokens


def stream_tokens_per_second(cfg: DataConfig, batch: int, seconds: float) -> float:
    iterator = iter(build_train_stream(cfg, 0, 1, batch))
    next(iterator)                                   # startup (file opening, first pages)
    start, tokens = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for item in itertools.islice(iterator, 20):
            tokens += item["tokens"].numel()
    return tokens / (time.perf_counter() - start)


def resume_skip_rate(path: str) -> float:
    """MB/s of decompressed text that a resume skips (every line, as if resuming at the end)."""
    with open(path, "rb") as handle:
        text_bytes = sum(len(chunk) for chunk in zstandard.ZstdDecompressor().read_to_iter(handle))
    start = time.perf_counter()
    for _ in iter_lines(path, StreamStats(), start_line=1 << 62):
        raise AssertionError("a line past the end was yielded")
    return text_bytes / (time.perf_counter() - start) / 1e6


def _compare_shard(path: str) -> tuple[int, int, int]:
    fast, reference = load_tokenizer("tiktoken"), load_tokenizer("hf")
    texts = [d.text for d in iter_documents(path, StreamStats())]
    mismatched, tokens = 0, 0
    for begin in range(0, len(texts), 64):
        chunk = texts[begin:begin + 64]
        expected = reference.encode_batch(chunk)
        mismatched += sum(fast.encode(t) != e for t, e in zip(chunk, expected, strict=True))
        tokens += sum(len(e) for e in expected)
    return len(texts), tokens, mismatched


def tokenizer_check(paths: list[str], processes: int) -> tuple[int, int, int, float]:
    start = time.perf_counter()
    with multiprocessing.Pool(processes) as pool:
        results = pool.map(_compare_shard, paths, chunksize=1)
    documents, tokens, mismatched = (sum(r[i] for r in results) for i in range(3))
    return documents, tokens, mismatched, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=SHARED_CORPUS, help="Pile-layout jsonl.zst corpus")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8, help="micro-batch size of rows (b), (c)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per window benchmark")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-tokenizer-check", action="store_true")
    parser.add_argument("--write-results", help="also write the table as markdown to this file")
    args = parser.parse_args()

    train = expand_paths(os.path.join(args.corpus, "train"))
    rows = []
    rate, tokens = raw_tokens_per_second(train)
    rows.append(("(a) raw jsonl.zst -> tokens", f"{rate / 1e6:.2f}M tokens/s", ">= 0.8M",
                 f"{tokens / 1e6:.1f}M tokens, {len(train)} shards"))
    base = DataConfig(train_path=os.path.join(args.corpus, "train"), seq_len=args.seq_len)
    rate = stream_tokens_per_second(base, args.batch, args.seconds)
    rows.append(("(a') raw training stream", f"{rate / 1e6:.2f}M tokens/s", "",
                 f"B={args.batch}, seq_len={args.seq_len}"))
    with tempfile.TemporaryDirectory() as scratch:
        for fmt, label, target in (("megatron", "(b) .bin/.idx windows", ">= 20M"),
                                   ("wds", "(c) wds windows", "")):
            out = os.path.join(scratch, fmt)
            start = time.perf_counter()
            manifest = preprocess(args.corpus, out, fmt, workers=args.workers, progress=False)
            elapsed = time.perf_counter() - start
            total = sum(s["tokens"] for s in manifest["splits"].values())
            rows.append((f"preprocess --format {fmt}", f"{total / elapsed / 1e6:.2f}M tokens/s",
                         "", f"{args.workers} workers, {total / 1e6:.1f}M tokens, "
                         f"{elapsed:.1f} s wall"))
            cfg = replace(base, format=fmt, train_path=os.path.join(out, "train"))
            rate = stream_tokens_per_second(cfg, args.batch, args.seconds)
            rows.append((label, f"{rate / 1e6:.1f}M tokens/s", target,
                         f"B={args.batch}, seq_len={args.seq_len}, shuffled"))
    rate = resume_skip_rate(train[0])
    rows.append(("resume skip (jsonl)", f"{rate:.0f} MB text/s", "",
                 "skip to a saved line without parsing"))
    if not args.skip_tokenizer_check:
        every = expand_paths(args.corpus)
        documents, tokens, mismatched, elapsed = tokenizer_check(every, args.workers)
        rows.append(("tokenizer check tiktoken vs HF", f"{mismatched} mismatched docs", "0",
                     f"{documents} docs, {tokens / 1e6:.2f}M tokens, {elapsed:.0f} s"))

    header = ("benchmark", "result", "target", "setting")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
             for row in [header] + rows]
    print("\n".join(lines))
    if args.write_results:
        table = ["| " + " | ".join(header) + " |", "|" + "---|" * 4]
        table += ["| " + " | ".join(row) + " |" for row in rows]
        Path(args.write_results).write_text(
            "# Data pipeline benchmark\n\n"
            f"`python benchmarks/data_bench.py --corpus {args.corpus}` on this machine "
            f"({os.cpu_count()} cores, CPU only); one process per row except preprocess and the "
            "tokenizer check.\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
