"""WebDataset tar shards of token arrays: a writer and a random-access memmap reader.

Each tar sample `<shard>-<n>` holds a chunk of whole documents (about `chunk_tokens` tokens):
  <key>.tokens.npy   uint16 ids of the documents back to back, EOS after each
  <key>.doclens.npy  int64 length of each document (EOS included)
  <key>.json         {"pile_set_name": [one name per document]}
so `webdataset.WebDataset(url).decode()` streams them as ordinary samples. Tars are written
uncompressed, which lets the training stream memmap every `.tokens.npy` payload in place and
read any window in O(1) instead of streaming the tar.
"""

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np

from data_pipeline.megatron_format import ShardFormatError

DEFAULT_CHUNK_TOKENS = 1 << 20


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class WdsShardWriter:
    """Writes documents into one uncompressed WebDataset tar.

    Example:
        >>> writer = WdsShardWriter("out/train/00.tar")
        >>> writer.add_document(np.array([12092, 1533, 0], dtype=np.uint16), "Pile-CC")
        >>> writer.finalize()
    """

    def __init__(self, path: str | os.PathLike, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.chunk_tokens = chunk_tokens
        self._tar = tarfile.open(self.path, "w", format=tarfile.USTAR_FORMAT)
        self._stem = self.path.name.split(".")[0]
        self._pieces: list[np.ndarray] = []
        self._names: list[str] = []
        self._pending = 0
        self._samples = 0
        self.num_tokens = 0

    def add_document(self, tokens: np.ndarray, pile_set_name: str) -> None:
        self._pieces.append(np.asarray(tokens, dtype=np.uint16))
        self._names.append(pile_set_name)
        self._pending += len(tokens)
        if self._pending >= self.chunk_tokens:
            self._flush()

    def finalize(self) -> int:
        """Write the last chunk and close the tar; returns the number of tokens written."""
        self._flush()
        self._tar.close()
        return self.num_tokens

    def _flush(self) -> None:
        if not self._pieces:
            return
        key = f"{self._stem}-{self._samples:06d}"
        lengths = np.array([len(p) for p in self._pieces], dtype=np.int64)
        members = {
            "tokens.npy": _npy_bytes(np.concatenate(self._pieces)),
            "doclens.npy": _npy_bytes(lengths),
            "json": json.dumps({"pile_set_name": self._names}).encode(),
        }
        for extension, payload in members.items():
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size = len(payload)
            info.mode = 0o644
            self._tar.addfile(info, io.BytesIO(payload))
        self.num_tokens += int(lengths.sum())
        self._samples += 1
        self._pieces, self._names, self._pending = [], [], 0


class WdsShard:
    """Token chunks of one tar, memmapped in place: `chunks[i]` is a uint16 array.

    Raises ShardFormatError naming the tar when it is truncated or a member is not a 1-D
    uint16 `.npy`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise ShardFormatError(f"{self.path} is missing")
        try:
            with tarfile.open(self.path, "r:") as tar:
                members = [m for m in tar.getmembers() if m.name.endswith(".tokens.npy")]
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ShardFormatError(f"{self.path} is not a readable tar ({error}); "
                                   f"re-run preprocess") from None
        size = os.path.getsize(self.path)
        blob = np.memmap(self.path, mode="r", dtype=np.uint8) if size else None
        self.chunks: list[np.ndarray] = []
        with open(self.path, "rb") as handle:
            for member in members:
                handle.seek(member.offset_data)
                try:
                    version = np.lib.format.read_magic(handle)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = read_header(handle)
                except ValueError as error:
                    raise ShardFormatError(f"{self.path}: {member.name} is not .npy ({error})") \
                        from None
                start = handle.tell()
                if dtype != np.uint16 or len(shape) != 1 or fortran:
                    raise ShardFormatError(f"{self.path}: {member.name} holds {dtype} {shape}; "
                                           f"expected a 1-D uint16 token array")
                if start + 2 * shape[0] > min(size, member.offset_data + member.size):
                    raise ShardFormatError(f"{self.path}: {member.name} is cut short; the tar is "
                                           f"truncated, re-run preprocess")
                self.chunks.append(np.frombuffer(blob, np.uint16, shape[0], start))
        self.num_tokens = sum(len(c) for c in self.chunks)
