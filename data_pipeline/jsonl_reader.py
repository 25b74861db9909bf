"""Streaming reader of Pile-format `jsonl.zst` shards in constant memory.

A shard is decompressed frame by frame in 1 MiB reads (never whole), split into lines, and each
line parsed as `{"text": ..., "meta": {"pile_set_name": ...}}`. Line numbers count physical
lines, bad ones included, so a resume position ("skip the first n lines") needs no parsing: the
cost of resuming at line n is decompressing and counting newlines up to it (about 1 GB/s of text
per core), not tokenizing it.
"""

import glob
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import zstandard

from data_pipeline.stats import DataError, StreamStats

READ_BYTES = 1 << 20
UNKNOWN_SET = "unknown"


class Document(NamedTuple):
    line: int                  # 0-based physical line number in its shard
    text: str
    pile_set_name: str


def expand_paths(pattern: str | os.PathLike, *, what: str = "data",
                 split: str | None = None) -> list[str]:
    """Shard paths of a file, a directory (its `*.jsonl.zst`, recursively) or a glob, sorted.

    With `split` ("train"), a directory that has a subdirectory of that name (a Pile root with
    train/, val.jsonl.zst, test.jsonl.zst) means only that subdirectory.

    Relative paths that do not exist under the CWD are tried under the repository root, so the
    default config works from any directory. A glob matching nothing is a DataError; a listed
    file that is missing is left in (the reader counts it as a missing shard).
    """
    text = str(pattern)
    candidates = [text]
    if not os.path.isabs(text):
        candidates.append(str(Path(__file__).resolve().parent.parent / text))
    for candidate in candidates:
        if split is not None and os.path.isdir(os.path.join(candidate, split)):
            candidate = os.path.join(candidate, split)
        if os.path.isdir(candidate):
            found = sorted(glob.glob(os.path.join(candidate, "**", "*.jsonl.zst"), recursive=True))
            if found:
                return found
        elif glob.has_magic(candidate):
            found = sorted(glob.glob(candidate, recursive=True))
            if found:
                return found
        elif os.path.exists(candidate):
            return [candidate]
    if not glob.has_magic(text) and not text.endswith(os.sep):
        return [text]
    raise DataError(f"{what} path '{text}' matches no files (also looked under the repository "
                    f"root); point data.train_path / data.val_path at jsonl.zst shards")


def iter_lines(path: str, stats: StreamStats, start_line: int = 0,
               on_read: Callable[[int], None] | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line bytes) of a shard from `start_line` on; bad zstd is counted, not raised.

    `on_read(n)` is called with each n compressed bytes read (for progress bars).

    Example: `for number, raw in iter_lines("val.jsonl.zst", StreamStats()): ...`
    """
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        stats.warn("missing_shards", path, "file not found")
        return
    except OSError as error:
        stats.warn("missing_shards", path, f"cannot open: {error}")
        return
    with handle:
        number = 0
        pending = b""
        outcome = {"truncated": False}
        try:
            for chunk in _decompressed_chunks(handle, path, stats, outcome, on_read):
                data = pending + chunk
                if number < start_line:          # resuming: count lines, build no objects
                    complete = data.count(b"\n")
                    if number + complete <= start_line:
                        number += complete
                        pending = data[data.rfind(b"\n") + 1:] if complete else data
                        continue
                lines = data.split(b"\n")
                pending = lines.pop()
                for raw in lines:
                    if number >= start_line:
                        yield number, raw
                    number += 1
        except zstandard.ZstdError as error:
            stats.warn("corrupt_shards", path, f"zstd error after line {number}: {error}")
            return
        if pending and number >= start_line and not outcome["truncated"]:
            yield number, pending          # a final line without a newline is still a line


def _decompressed_chunks(handle, path: str, stats: StreamStats, outcome: dict,
                         on_read: Callable[[int], None] | None) -> Iterator[bytes]:
    """Decompressed bytes of every zstd frame in `handle`; flags a stream cut mid-frame."""
    context = zstandard.ZstdDecompressor()
    frame = context.decompressobj()
    fed_into_frame = 0
    while True:
        data = handle.read(READ_BYTES)
        if not data:
            break
        if on_read is not None:
            on_read(len(data))
        while data:
            fed_into_frame += len(data)
            out = frame.decompress(data)
            if out:
                yield out
            if frame.eof:
                data = frame.unused_data
                frame = context.decompressobj()
                fed_into_frame = 0
            else:
                data = b""
    if fed_into_frame and not frame.eof:
        stats.warn("truncated_shards", path, "the zstd stream ends mid-frame (file truncated?); "
                   "its incomplete last line is dropped")
        outcome["truncated"] = True


def parse_line(raw: bytes, path: str, number: int, stats: StreamStats) -> Document | None:
    """The Document on one raw line, or None (counted in `stats`) if the line is unusable."""
    if not raw.strip():
        return None                        # blank separator lines are not documents
    try:
        record = json.loads(raw)
    except UnicodeDecodeError:
        stats.warn("invalid_utf8_lines", path, f"line {number + 1} is not valid UTF-8")
        return None
    except ValueError:
        stats.warn("bad_json_lines", path, f"line {number + 1} is not JSON")
        return None
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        stats.warn("missing_text_lines", path, f"line {number + 1} has no string 'text' field")
        return None
    if not text:
        stats.warn("empty_text_lines", path, f"line {number + 1} has empty text")
        return None
    if (b"\\ud" in raw or b"\\uD" in raw) and not _encodable(text):
        stats.warn("invalid_utf8_lines", path, f"line {number + 1} has a lone surrogate escape")
        return None
    meta = record.get("meta")
    name = meta.get("pile_set_name") if isinstance(meta, dict) else None
    return Document(number, text, name if isinstance(name, str) and name else UNKNOWN_SET)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def iter_documents(path: str, stats: StreamStats, start_line: int = 0) -> Iterator[Document]:
    """Valid documents of one `jsonl.zst` shard from `start_line` on, bad lines counted in `stats`.

    Example:
        >>> stats = StreamStats()
        >>> docs = list(iter_documents("data/embedded/val.jsonl.zst", stats))
        >>> docs[0].pile_set_name, stats["documents"] == len(docs)
    """
    for number, raw in iter_lines(path, stats, start_line):
        document = parse_line(raw, path, number, stats)
        if document is not None:
            stats.add("documents")
            yield document


def require_some(paths: list[str], stats: StreamStats, delivered: int, what: str) -> None:
    """Raise a DataError naming the files when a full pass over them delivered nothing."""
    if delivered:
        return
    shown = ", ".join(paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
    raise DataError(f"no valid {what} in {shown} (skipped: {stats.as_dict() or 'nothing'}); "
                    f"check the files exist and are Pile-format jsonl.zst")
