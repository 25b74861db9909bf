"""The training stream: `build_train_stream(data_cfg, rank, world_size, micro_batch_size)`.

It yields `{"tokens": LongTensor[B, seq_len + 1], "sample_ids": LongTensor[B]}` forever (inputs
are tokens[:, :-1], targets tokens[:, 1:]) and has `state_dict()` / `load_state_dict()` and
`stats`. For pre-tokenized data (format megatron | wds) the sample at global index g is
    epoch = g // N,  window = permute(g % N, N, seed, epoch)        (N windows per epoch)
and micro-batch t of rank r holds g = consumed_at_start + t*W*B + r*B + [0, B). The whole state is
`consumed_samples` (+ seed, epoch), identical on every rank, so resume is exact for any new world
size, micro-batch size or worker count. format=jsonl streams raw shards (see raw_stream.py).
"""

import logging
from itertools import count

import numpy as np
import torch

from data_pipeline.config import DATA_FORMATS, PRETOKENIZED_FORMATS
from data_pipeline.jsonl_reader import expand_paths
from data_pipeline.permutation import permute
from data_pipeline.raw_stream import RawShardConsumers, shard_keys
from data_pipeline.stats import DataError, StreamStats
from data_pipeline.token_corpus import TokenCorpus, find_token_shards

logger = logging.getLogger("metastate.data")


def build_train_stream(data_cfg, rank: int = 0, world_size: int = 1, micro_batch_size: int = 1,
                       max_epochs: int | None = None):
    """The training batches of one rank (infinite unless `max_epochs` is given).

    Example:
        >>> stream = build_train_stream(cfg.data, rank=0, world_size=1, micro_batch_size=8)
        >>> batch = next(iter(stream)); batch["tokens"].shape
        torch.Size([8, 513])
        >>> checkpoint["data"] = stream.state_dict()     # later: stream.load_state_dict(...)
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    if micro_batch_size < 1 or data_cfg.seq_len < 1:
        raise ValueError("micro_batch_size and data.seq_len must be >= 1")
    if data_cfg.format == "jsonl":
        return RawTrainStream(data_cfg, rank, world_size, micro_batch_size, max_epochs)
    if data_cfg.format in PRETOKENIZED_FORMATS:
        return IndexedTrainStream(data_cfg, rank, world_size, micro_batch_size, max_epochs)
    raise ValueError(f"data.format must be one of {' | '.join(DATA_FORMATS)}, got {data_cfg.format!r}")


def _loader(dataset, data_cfg, **kwargs) -> torch.utils.data.DataLoader:
    workers = data_cfg.num_workers
    extra = {"prefetch_factor": data_cfg.prefetch_factor} if workers else {}
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, **extra,
                                       **kwargs)


class _WindowBatches(torch.utils.data.Dataset):
    """dataset[list of global sample indices] -> one micro-batch (fetched inside a worker)."""

    def __init__(self, corpus: TokenCorpus, seq_len: int, seed: int):
        self.corpus, self.seq_len, self.seed = corpus, seq_len, seed
        self.per_epoch = corpus.num_windows(seq_len)

    def __len__(self) -> int:
        return self.per_epoch

    def __getitem__(self, global_indices: list[int]) -> dict:
        indices = np.asarray(global_indices, dtype=np.int64)
        epochs, positions = np.divmod(indices, self.per_epoch)
        windows = np.empty_like(indices)
        for epoch in np.unique(epochs).tolist():
            chosen = epochs == epoch
            windows[chosen] = permute(positions[chosen], self.per_epoch, self.seed, epoch)
        tokens = np.empty((len(windows), self.seq_len + 1), dtype=np.int64)
        for row, window in enumerate(windows.tolist()):
            self.corpus.window(window, self.seq_len, out=tokens[row])
        return {"tokens": torch.from_numpy(tokens),
                "sample_ids": torch.from_numpy(epochs * self.per_epoch + windows)}


class _RankBatchIndices:
    """Global sample indices of each micro-batch of one rank, from `start` on (until `stop`)."""

    def __init__(self, start: int, rank: int, world_size: int, batch: int, stop: int | None):
        self.start, self.rank, self.world_size, self.batch, self.stop = (
            start, rank, world_size, batch, stop)

    def __iter__(self):
        for step in count():
            first = self.start + (step * self.world_size + self.rank) * self.batch
            indices = list(range(first, first + self.batch))
            if self.stop is not None:
                indices = [i for i in indices if i < self.stop]
                if not indices:
                    return
            yield indices


class IndexedTrainStream:
    """Shuffled windows of pre-tokenized shards; state = consumed_samples (see module doc)."""

    def __init__(self, data_cfg, rank: int, world_size: int, micro_batch_size: int,
                 max_epochs: int | None = None):
        self.cfg, self.rank, self.world_size = data_cfg, rank, world_size
        self.micro_batch_size, self.max_epochs = micro_batch_size, max_epochs
        self.stats = StreamStats()
        paths = find_token_shards(data_cfg.train_path, data_cfg.format)
        self.corpus = TokenCorpus(paths, data_cfg.format, self.stats)
        self.samples_per_epoch = self.corpus.num_windows(data_cfg.seq_len)
        if self.samples_per_epoch < 1:
            raise DataError(f"{data_cfg.train_path} holds {self.corpus.num_tokens} tokens, fewer "
                            f"than one window of data.seq_len + 1 = {data_cfg.seq_len + 1}")
        self.seed = data_cfg.seed
        self.consumed_samples = 0

    @property
    def epoch(self) -> int:
        return self.consumed_samples // self.samples_per_epoch

    def __iter__(self):
        start = self.consumed_samples
        stop = self.max_epochs * self.samples_per_epoch if self.max_epochs is not None else None
        dataset = _WindowBatches(self.corpus, self.cfg.seq_len, self.seed)
        sampler = _RankBatchIndices(start, self.rank, self.world_size, self.micro_batch_size, stop)
        per_step = self.world_size * self.micro_batch_size
        for step, batch in enumerate(_loader(dataset, self.cfg, sampler=sampler)):
            self.consumed_samples = start + (step + 1) * per_step
            if stop is not None:
                self.consumed_samples = min(self.consumed_samples, stop)
            yield batch

    def state_dict(self) -> dict:
        return {"format": self.cfg.format, "consumed_samples": self.consumed_samples,
                "epoch": self.epoch, "seed": self.seed, "seq_len": self.cfg.seq_len,
                "samples_per_epoch": self.samples_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue after `state["consumed_samples"]` global samples (any world size)."""
        _check_state(state, self.cfg, self.samples_per_epoch)
        if state["seed"] != self.seed:
            logger.warning("data: resuming with the checkpoint's data seed %s (config says %s)",
                           state["seed"], self.seed)
        self.seed = state["seed"]
        self.consumed_samples = int(state["consumed_samples"])


class RawTrainStream:
    """Windows of raw jsonl.zst shards; state = one position per shard (see raw_stream.py).

    `state_dict()` is a collective over every process when torch.distributed is initialized:
    each rank knows only the positions of its own shards, so they are all-gathered and merged
    (one state per data rank: tensor-parallel peers share a rank and read the same shards).
    """

    def __init__(self, data_cfg, rank: int, world_size: int, micro_batch_size: int,
                 max_epochs: int | None = None):
        self.cfg, self.rank, self.world_size = data_cfg, rank, world_size
        self.micro_batch_size, self.max_epochs = micro_batch_size, max_epochs
        self.stats = StreamStats()
        self.paths = expand_paths(data_cfg.train_path, what="data.train_path", split="train")
        self.keys = shard_keys(self.paths)
        self.workers = max(1, data_cfg.num_workers)
        consumers = world_size * self.workers
        if len(self.paths) < consumers:
            raise DataError(f"format=jsonl deals whole shards to {world_size} ranks x "
                            f"{self.workers} workers = {consumers} readers, but "
                            f"{data_cfg.train_path} has only {len(self.paths)} shards; lower "
                            f"data.num_workers or preprocess to megatron/wds")
        self.seed = data_cfg.seed
        self.positions = {k: {"epoch": 0, "line": 0, "token": 0, "windows": 0} for k in self.keys}
        self.consumed_samples = 0

    @property
    def epoch(self) -> int:
        return min(p["epoch"] for p in self.positions.values())

    def _worker_shards(self) -> list[list[int]]:
        consumers = self.world_size * self.workers
        return [[s for s in range(len(self.paths)) if s % consumers == self.rank * self.workers + k]
                for k in range(self.workers)]

    def __iter__(self):
        dataset = RawShardConsumers(self.paths, self.keys, self._worker_shards(), self.positions,
                                    self.cfg.seq_len, self.micro_batch_size, self.seed,
                                    self.cfg.tokenizer, self.max_epochs)
        for batch in _loader(dataset, self.cfg):
            self.stats.merge(batch.pop("_stats"))
            for key, position in batch.pop("_positions").items():
                self.positions[key] = position
            if "tokens" in batch:
                self.consumed_samples += len(batch["sample_ids"])
                yield batch

    def rank_state(self) -> dict:
        """This rank's part of the state: the positions of the shards it reads."""
        mine = {self.keys[s] for shards in self._worker_shards() for s in shards}
        return {"positions": {k: dict(self.positions[k]) for k in mine},
                "consumed_samples": self.consumed_samples}

    def state_dict(self) -> dict:
        parts = [self.rank_state()]
        if (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (self.rank, self.rank_state()))
            parts = list(dict(gathered).values())
        return self.combine_rank_states(parts)

    def combine_rank_states(self, parts: list[dict]) -> dict:
        """The full state from every rank's `rank_state()` (what state_dict() gathers)."""
        positions = {k: dict(v) for k, v in self.positions.items()}
        for part in parts:
            positions.update(part["positions"])
        return {"format": "jsonl", "consumed_samples": sum(p["consumed_samples"] for p in parts),
                "epoch": min(p["epoch"] for p in positions.values()), "seed": self.seed,
                "seq_len": self.cfg.seq_len, "shards": positions}

    def load_state_dict(self, state: dict) -> None:
        """Continue every shard at its saved position (any world size or worker count)."""
        _check_state(state, self.cfg, None)
        unknown = sorted(set(state["shards"]) - set(self.keys))
        if unknown:
            raise DataError(f"the checkpoint's data state names shards {unknown[:3]} that are not "
                            f"in data.train_path={self.cfg.train_path}; point it at the same files")
        self.seed = state["seed"]
        self.positions.update({k: dict(v) for k, v in state["shards"].items()})
        # ranks sum their counts in state_dict(), so the saved total lives on rank 0 only
        self.consumed_samples = int(state["consumed_samples"]) if self.rank == 0 else 0


def _check_state(state: dict, data_cfg, samples_per_epoch: int | None) -> None:
    if state.get("format") != data_cfg.format:
        raise DataError(f"the checkpoint's data state is for format={state.get('format')!r} but "
                        f"data.format={data_cfg.format!r}; resume with the same format")
    if state.get("seq_len") != data_cfg.seq_len:
        raise DataError(f"the checkpoint's data state has seq_len={state.get('seq_len')} but "
                        f"data.seq_len={data_cfg.seq_len}; resume with the same seq_len")
    if samples_per_epoch is not None and state.get("samples_per_epoch") != samples_per_epoch:
        raise DataError(f"the checkpoint saw {state.get('samples_per_epoch')} windows per epoch, "
                        f"data.train_path now gives {samples_per_epoch}: the dataset changed")
