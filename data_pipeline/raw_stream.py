"""Training windows straight from raw Pile `jsonl.zst` shards, tokenized on the fly, resumable.

Each shard is packed on its own into `seq_len + 1` windows (consecutive windows share one token;
a shard's last < seq_len + 1 tokens are dropped each epoch). The set of windows is therefore a
function of the shard alone, and the resume state is one position per shard:
`{"epoch", "line", "token", "windows"}` = the next window starts at token `token` of physical line
`line`. Shards are dealt to (rank, worker) consumers round-robin (shard s -> consumer s mod C),
so no shard is read twice; after a change of world size or worker count the shards are dealt
again and every consumer continues each shard where it stopped. Cost of resuming: each shard is
decompressed and its newlines counted up to the saved line (~1 GB/s of text per core); nothing
before that line is parsed or tokenized. The first shard-ordering of each epoch is shuffled by
(seed, epoch).
"""

import os
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch

from data_pipeline.jsonl_reader import iter_documents, require_some
from data_pipeline.stats import StreamStats
from data_pipeline.tokenizer import load_tokenizer

SHARD_ID_BITS = 32           # sample id = ((epoch * num_shards + shard) << 32) + window number


def shard_keys(paths: list[str]) -> list[str]:
    """Stable names of shards for the resume state: paths relative to their common directory."""
    if len(paths) == 1:
        return [os.path.basename(paths[0])]
    root = os.path.commonpath([os.path.abspath(p) for p in paths])
    return [os.path.relpath(os.path.abspath(p), root) for p in paths]


def shard_windows(path: str, tokenizer, seq_len: int, line: int, token: int,
                  stats: StreamStats) -> Iterator[tuple[np.ndarray, int, int]]:
    """(window, next line, next token) for each `seq_len + 1` window of a shard from a position."""
    span = seq_len + 1
    pieces: deque = deque()             # [line, offset into the document, remaining ids]
    held = 0
    for document in iter_documents(path, stats, start_line=line):
        try:
            ids = tokenizer.encode_document(document.text)
        except (UnicodeEncodeError, ValueError):
            stats.warn("invalid_utf8_lines", path, f"line {document.line + 1} has lone "
                       f"surrogates (not encodable as UTF-8)")
            continue
        offset = token if document.line == line else 0
        if offset >= len(ids):
            continue
        pieces.append([document.line, offset, ids[offset:]])
        held += len(ids) - offset
        stats.add("tokens", len(ids) - offset)
        while held >= span:
            first = pieces[0][2]
            if len(first) >= span:
                window = first[:span]
            else:
                window = np.concatenate([p[2] for p in _take(pieces, span)])[:span]
            used = seq_len
            while used:
                piece = pieces[0]
                if len(piece[2]) <= used:
                    used -= len(piece[2])
                    pieces.popleft()
                else:
                    piece[1] += used
                    piece[2] = piece[2][used:]
                    used = 0
            held -= seq_len
            yield window, pieces[0][0], pieces[0][1]


def _take(pieces: deque, count: int) -> list:
    taken, total = [], 0
    for piece in pieces:
        taken.append(piece)
        total += len(piece[2])
        if total >= count:
            break
    return taken


class RawShardConsumers(torch.utils.data.IterableDataset):
    """The batches of one rank: worker k reads the shards dealt to consumer (rank * K + k).

    Each batch carries `_positions` (shard -> state after its last window in the batch) and
    `_stats` (counts since the previous batch); RawTrainStream applies them as batches are taken.
    """

    def __init__(self, paths: list[str], keys: list[str], worker_shards: list[list[int]],
                 positions: dict, seq_len: int, micro_batch_size: int, seed: int,
                 tokenizer_backend: str, max_epochs: int | None):
        self.paths, self.keys, self.worker_shards = paths, keys, worker_shards
        self.positions = positions
        self.seq_len, self.micro_batch_size, self.seed = seq_len, micro_batch_size, seed
        self.tokenizer_backend, self.max_epochs = tokenizer_backend, max_epochs

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        mine = self.worker_shards[info.id if info is not None else 0]
        tokenizer = load_tokenizer(self.tokenizer_backend)
        stats = StreamStats()
        positions = {self.keys[s]: dict(self.positions[self.keys[s]]) for s in mine}
        windows, ids, touched = [], [], {}
        for shard, window, position in self._windows(mine, positions, tokenizer, stats):
            touched[self.keys[shard]] = dict(position)
            if window is None:                  # the shard ended: its completion is state too
                continue
            windows.append(window)
            ids.append(((position["epoch"] * len(self.paths) + shard) << SHARD_ID_BITS)
                       + position["windows"] - 1)
            if len(windows) == self.micro_batch_size:
                yield self._batch(windows, ids, touched, stats)
                windows, ids, touched = [], [], {}
        if windows:
            yield self._batch(windows, ids, touched, stats)
        elif touched or stats.counts:           # only bookkeeping left (max_epochs reached)
            yield {"_positions": touched, "_stats": stats.as_dict()}

    def _windows(self, mine: list[int], positions: dict, tokenizer, stats: StreamStats):
        epoch = min(positions[self.keys[s]]["epoch"] for s in mine)
        while self.max_epochs is None or epoch < self.max_epochs:
            order = np.random.default_rng([self.seed, epoch]).permutation(mine)
            delivered, fresh = 0, True
            for shard in order.tolist():
                key = self.keys[shard]
                state = positions[key]
                if state["epoch"] > epoch:       # done this epoch before a resume
                    fresh = False
                    continue
                fresh = fresh and state["line"] == 0 and state["token"] == 0
                windows = shard_windows(self.paths[shard], tokenizer, self.seq_len,
                                        state["line"], state["token"], stats)
                for window, line, token in windows:
                    state.update(line=line, token=token, windows=state["windows"] + 1)
                    delivered += 1
                    yield shard, window, state
                positions[key] = {"epoch": epoch + 1, "line": 0, "token": 0, "windows": 0}
                yield shard, None, positions[key]
            if fresh:
                require_some([self.paths[s] for s in mine], stats, delivered,
                             f"{self.seq_len + 1}-token windows")
            epoch += 1

    @staticmethod
    def _batch(windows, ids, touched, stats: StreamStats) -> dict:
        counts = stats.as_dict()
        stats.counts.clear()
        return {"tokens": torch.from_numpy(np.stack(windows).astype(np.int64)),
                "sample_ids": torch.tensor(ids, dtype=torch.int64),
                "_positions": touched, "_stats": counts}
