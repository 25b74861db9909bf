"""Megatron `.bin/.idx` token files: a writer and a validating memmap reader.

The on-disk format is megatron-core's `IndexedDataset` (megatron/core/datasets/indexed_dataset.py):
  .idx = b"MMIDIDX\\x00\\x00" | version <Q (1) | dtype code <B | sequence count S <Q |
         document count D <Q | int32 lengths[S] | int64 byte pointers[S] | int64 doc indices[D]
         [| int8 modes[S] for multimodal files]
  .bin = the token arrays of all sequences back to back.
We write one sequence per document (EOS included), which is what megatron's preprocess_data.py
does for GPT data. Our writer is byte-identical to megatron-core's IndexedDatasetBuilder (tested)
and avoids importing megatron-core (8 s) in every preprocessing process.
"""

import os
import struct
from pathlib import Path

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_OF_CODE = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
                 6: np.float64, 7: np.float32, 8: np.uint16}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_OF_CODE.items()}
_FIXED_HEADER = len(INDEX_HEADER) + 8 + 1 + 8 + 8


class ShardFormatError(ValueError):
    """A .bin/.idx pair (or a tar shard) that cannot be read as written."""


def shard_prefix(path: str | os.PathLike) -> str:
    """`x/00` for `x/00`, `x/00.bin` or `x/00.idx`."""
    text = str(path)
    return text[:-4] if text.endswith((".bin", ".idx")) else text


class MegatronShardWriter:
    """Appends documents to `<prefix>.bin` and writes `<prefix>.idx` on `finalize()`.

    Example:
        >>> writer = MegatronShardWriter("out/train/00")
        >>> writer.add_document(np.array([12092, 1533, 0], dtype=np.uint16))
        >>> writer.finalize()
    """

    def __init__(self, prefix: str | os.PathLike, dtype=np.uint16):
        self.prefix = shard_prefix(prefix)
        self.dtype = np.dtype(dtype)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self._bin = open(self.prefix + ".bin", "wb")
        self._lengths: list[int] = []

    def add_document(self, tokens: np.ndarray) -> None:
        array = np.ascontiguousarray(tokens, dtype=self.dtype)
        self._bin.write(array.tobytes())
        self._lengths.append(array.size)

    def finalize(self) -> int:
        """Close the .bin, write the .idx; returns the number of tokens written."""
        self._bin.close()
        lengths = np.array(self._lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        document_indices = np.arange(len(lengths) + 1, dtype=np.int64)
        with open(self.prefix + ".idx", "wb") as idx:
            idx.write(INDEX_HEADER)
            idx.write(struct.pack("<Q", INDEX_VERSION))
            idx.write(struct.pack("<B", CODE_OF_DTYPE[self.dtype]))
            idx.write(struct.pack("<Q", len(lengths)))
            idx.write(struct.pack("<Q", len(document_indices)))
            idx.write(lengths.tobytes())
            idx.write(pointers.tobytes())
            idx.write(document_indices.tobytes())
        return int(lengths.sum(dtype=np.int64))


class MegatronShard:
    """Read-only view of one `.bin/.idx` pair; `tokens` is the whole .bin as a memmap.

    Raises ShardFormatError (naming the file) when the .idx is malformed or disagrees with the
    size of its .bin, so a truncated copy is never read as valid data.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = shard_prefix(prefix)
        idx_path, bin_path = self.prefix + ".idx", self.prefix + ".bin"
        for path in (idx_path, bin_path):
            if not os.path.isfile(path):
                raise ShardFormatError(f"{path} is missing (a Megatron shard needs .bin and .idx)")
        idx_size = os.path.getsize(idx_path)
        with open(idx_path, "rb") as stream:
            head = stream.read(_FIXED_HEADER)
        if len(head) < _FIXED_HEADER or head[:len(INDEX_HEADER)] != INDEX_HEADER:
            raise ShardFormatError(f"{idx_path} is not a Megatron index (bad header)")
        version, code, sequences, documents = struct.unpack("<QBQQ", head[len(INDEX_HEADER):])
        if version != INDEX_VERSION or code not in DTYPE_OF_CODE:
            raise ShardFormatError(f"{idx_path}: unsupported version {version} or dtype {code}")
        self.dtype = np.dtype(DTYPE_OF_CODE[code])
        plain = _FIXED_HEADER + sequences * 12 + documents * 8
        if idx_size not in (plain, plain + sequences):       # + int8 modes when multimodal
            raise ShardFormatError(f"{idx_path} is {idx_size} bytes but its header describes "
                                   f"{plain}; the index is truncated or corrupt, re-run preprocess")
        index = np.memmap(idx_path, mode="r", dtype=np.uint8)
        offset = _FIXED_HEADER
        self.sequence_lengths = np.frombuffer(index, np.int32, sequences, offset)
        offset += 4 * sequences
        self.sequence_pointers = np.frombuffer(index, np.int64, sequences, offset)
        offset += 8 * sequences
        self.document_indices = np.frombuffer(index, np.int64, documents, offset)
        self.num_tokens = int(self.sequence_lengths.sum(dtype=np.int64))
        bin_size = os.path.getsize(bin_path)
        if bin_size != self.num_tokens * self.dtype.itemsize:
            raise ShardFormatError(f"{bin_path} is {bin_size} bytes but {idx_path} describes "
                                   f"{self.num_tokens} tokens of {self.dtype.name}; the pair is "
                                   f"from different runs or truncated, re-run preprocess")
        if sequences and (self.sequence_pointers[0] != 0 or np.any(
                np.diff(self.sequence_pointers) != self.sequence_lengths[:-1].astype(np.int64)
                * self.dtype.itemsize)):
            raise ShardFormatError(f"{idx_path}: sequences are not stored back to back in the .bin")
        self.tokens = (np.memmap(bin_path, mode="r", dtype=self.dtype) if bin_size
                       else np.zeros(0, dtype=self.dtype))

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def document(self, index: int) -> np.ndarray:
        start = int(self.sequence_pointers[index]) // self.dtype.itemsize
        return np.asarray(self.tokens[start:start + int(self.sequence_lengths[index])])
