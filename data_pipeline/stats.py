"""Counted warnings for bad input, and the error raised when nothing valid remains.

Readers skip what they can and count it here; the first problem of each kind in each file is
logged with the file name, later ones only counted (a corpus with a million bad lines must not
flood the log). Streams expose their `StreamStats` so a trainer can log or assert on them.
"""

import logging
from collections import Counter
from dataclasses import dataclass, field

logger = logging.getLogger("metastate.data")

# Everything a reader may skip; documents/tokens count what it delivered.
SKIP_KINDS = (
    "missing_shards",         # a listed shard file does not exist
    "corrupt_shards",         # zstd error or checksum mismatch: the rest of that shard is skipped
    "truncated_shards",       # the zstd stream ends mid-frame: its partial last line is dropped
    "bad_json_lines",         # a line that is not a JSON object
    "missing_text_lines",     # a JSON object without a string "text"
    "empty_text_lines",       # "text" is ""
    "invalid_utf8_lines",     # bytes that are not UTF-8 (or lone surrogates in the JSON escapes)
    "bad_index_files",        # .idx/.bin (or tar member) that disagree: the shard is skipped
)


class DataError(RuntimeError):
    """No valid data remains (or a request cannot be served); the message names the files."""


@dataclass
class StreamStats:
    """Counts of what a stream delivered and skipped; `stats.skipped` sums the skip kinds."""

    counts: Counter = field(default_factory=Counter)
    _warned: set = field(default_factory=set, repr=False)

    def warn(self, kind: str, path: str, detail: str) -> None:
        if kind not in SKIP_KINDS:
            raise ValueError(f"unknown skip kind {kind!r}; expected one of {SKIP_KINDS}")
        self.counts[kind] += 1
        if (kind, path) not in self._warned:
            self._warned.add((kind, path))
            logger.warning("data: skipping (%s) in %s: %s; further ones in this file are only "
                           "counted in the stream's stats", kind, path, detail)

    def add(self, kind: str, amount: int = 1) -> None:
        self.counts[kind] += amount

    def merge(self, other: "StreamStats | dict") -> None:
        counts = other.counts if isinstance(other, StreamStats) else other
        self.counts.update(counts)

    @property
    def skipped(self) -> int:
        return sum(self.counts[k] for k in SKIP_KINDS)

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.counts.items()) if v}

    def __getitem__(self, kind: str) -> int:
        return self.counts[kind]
