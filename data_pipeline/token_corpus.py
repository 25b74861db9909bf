"""Pre-tokenized shards (Megatron .bin/.idx or WebDataset tars) seen as one token sequence.

All shards' tokens, in sorted path order, form one logical stream; window i of length L is
tokens[i*L : i*L + L + 1] (consecutive windows share one token, so every token is a target once).
Bad shards are skipped with a counted warning; no valid shard at all is a DataError naming them.
The object pickles as its file list, so DataLoader workers reopen the memmaps themselves.
"""

import glob
import os
from pathlib import Path

import numpy as np

from data_pipeline.megatron_format import MegatronShard, ShardFormatError, shard_prefix
from data_pipeline.stats import DataError, StreamStats
from data_pipeline.wds_format import WdsShard

_SUFFIX = {"megatron": ".idx", "wds": ".tar"}
REPO_ROOT = Path(__file__).resolve().parent.parent


def find_token_shards(pattern: str | os.PathLike, fmt: str) -> list[str]:
    """Shard paths (`.idx` prefixes for megatron, `.tar` for wds) of a file, directory or glob.

    A directory means every shard below it, except that a `metastate preprocess` output directory
    (it has manifest.json and train/) means its train/ split. Example:
    `find_token_shards("out", "megatron")` -> ["out/train/00", "out/train/01", ...].
    """
    if fmt not in _SUFFIX:
        raise ValueError(f"format must be one of {' | '.join(_SUFFIX)}, got {fmt!r}")
    suffix, text = _SUFFIX[fmt], str(pattern)
    roots = [text] if os.path.isabs(text) else [text, str(REPO_ROOT / text)]
    for root in roots:
        if os.path.isfile(os.path.join(root, "manifest.json")) and os.path.isdir(
                os.path.join(root, "train")):
            root = os.path.join(root, "train")
        if os.path.isdir(root):
            found = glob.glob(os.path.join(root, "**", "*" + suffix), recursive=True)
        elif glob.has_magic(root):
            found = [p for p in glob.glob(root, recursive=True)
                     if p.endswith(suffix) or (fmt == "megatron" and p.endswith(".bin"))]
        elif os.path.exists(root) or os.path.exists(shard_prefix(root) + ".idx"):
            found = [root]
        else:
            continue
        if found:
            shards = {shard_prefix(p) if fmt == "megatron" else p for p in found}
            return sorted(shards)
    raise DataError(f"no {fmt} shards ({suffix}) at '{text}' (also looked under the repository "
                    f"root); run `metastate preprocess --format {fmt}` and point data.train_path "
                    f"at its output")


def _open_segments(path: str, fmt: str) -> list[np.ndarray]:
    if fmt == "megatron":
        shard = MegatronShard(path)
        return [shard.tokens] if shard.num_tokens else []
    return [c for c in WdsShard(path).chunks if len(c)]


class TokenCorpus:
    """Random access to the concatenated tokens of pre-tokenized shards.

    Example:
        >>> corpus = TokenCorpus(find_token_shards("out/train", "megatron"), "megatron")
        >>> corpus.window(0, seq_len=512).shape
        (513,)
    """

    def __init__(self, paths: list[str], fmt: str, stats: StreamStats | None = None):
        self.fmt = fmt
        self.stats = stats if stats is not None else StreamStats()
        self.paths: list[str] = []
        self._segments: list[np.ndarray] | None = []
        for path in paths:
            exists = os.path.exists(path) or os.path.exists(shard_prefix(path) + ".idx")
            if not exists:
                self.stats.warn("missing_shards", path, "file not found")
                continue
            try:
                segments = _open_segments(path, fmt)
            except ShardFormatError as error:
                self.stats.warn("bad_index_files", path, str(error))
                continue
            self.paths.append(path)
            self._segments += segments
        lengths = np.array([len(s) for s in self._segments], dtype=np.int64)
        self.segment_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.num_tokens = int(self.segment_starts[-1])
        if self.num_tokens < 2:
            shown = ", ".join(paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
            raise DataError(f"no valid {fmt} tokens in {shown or 'an empty file list'} (skipped: "
                            f"{self.stats.as_dict() or 'nothing'}); re-run metastate preprocess")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_segments"] = None
        return state

    def _segment_arrays(self) -> list[np.ndarray]:
        if self._segments is None:           # in a DataLoader worker: reopen the memmaps
            self._segments = [s for p in self.paths for s in _open_segments(p, self.fmt)]
        return self._segments

    def num_windows(self, seq_len: int) -> int:
        return (self.num_tokens - 1) // seq_len

    def read(self, start: int, length: int, out: np.ndarray | None = None) -> np.ndarray:
        """tokens[start : start + length] of the logical stream, copied into `out` (int64)."""
        segments = self._segment_arrays()
        if out is None:
            out = np.empty(length, dtype=np.int64)
        index = int(np.searchsorted(self.segment_starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            offset = start + filled - int(self.segment_starts[index])
            piece = segments[index][offset:offset + length - filled]
            out[filled:filled + len(piece)] = piece
            filled += len(piece)
            index += 1
        return out

    def window(self, index: int, seq_len: int, out: np.ndarray | None = None) -> np.ndarray:
        return self.read(index * seq_len, seq_len + 1, out)
