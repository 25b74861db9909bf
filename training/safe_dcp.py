"""torch.distributed.checkpoint without arbitrary unpickling on load.

DCP's stock reader unpickles its `.metadata` file with plain `pickle` and its non-tensor values
with `torch.load(weights_only=False)`: a tampered checkpoint could run code. Here the metadata is
unpickled with an allow-list of the classes DCP itself writes, and values with weights_only=True.
"""

import pickle
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta

from training.checkpointing import CheckpointError

_SINGLE_PROCESS_WARNING = "torch.distributed is disabled, unavailable or uninitialized"
_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # exact names only: pickle protocol 4 resolves dotted names ("os.system" inside an
        # allowed module), so a prefix or module-wide rule is no allow-list at all
        allowed = "." not in name and (
            (module, name) in _ALLOWED
            or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
        )
        if not allowed:
            raise pickle.UnpicklingError(
                f"checkpoint metadata refers to {module}.{name}, which DCP never writes; refusing to "
                "load it (the file may have been tampered with)")
        return super().find_class(module, name)


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file asks to unpickle something a checkpoint never contains."""


class SafeFileSystemReader(FileSystemReader):
    refusal: str | None = None

    def read_metadata(self, *args, **kwargs):
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as metadata_file:
            try:
                metadata = _MetadataUnpickler(metadata_file).load()
            except pickle.UnpicklingError as err:
                self.refusal = f"{path}: {err}"  # DCP buries reader errors in a per-rank report
                raise
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item, value) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def save(state: dict, directory: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING)
        dcp.save(state, checkpoint_id=str(directory))


def load(state: dict, directory: Path) -> None:
    """Fill `state` in place from `directory` (resharding as DCP does), pickle-safely."""
    reader = SafeFileSystemReader(str(directory))
    try:  # refuse before dcp.load, which would log the refusal's traceback as a warning
        reader.read_metadata()
    except pickle.UnpicklingError:
        raise UnsafeCheckpointError(reader.refusal) from None
    except (OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"{directory}: its .metadata cannot be read ({type(err).__name__}: "
                              f"{' '.join(str(err).split())[:200]}); pass an earlier checkpoint") from err
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING)
            dcp.load(state, storage_reader=reader, planner=WeightsOnlyLoadPlanner())
    except (Exception, CheckpointException) as err:  # CheckpointException is a BaseException
        if reader.refusal:
            raise UnsafeCheckpointError(reader.refusal) from err
        if isinstance(err, (OSError, EOFError, RuntimeError, pickle.UnpicklingError, CheckpointException)):
            # a damaged file the manifest could not vouch for (a checkpoint older than its file list,
            # or a shard too big for a CRC): one line, the cause stays chained
            reason = " ".join(str(err).split())[:200]
            raise CheckpointError(f"{directory}: cannot be loaded ({type(err).__name__}: {reason}); "
                                  "it may be damaged: pass an earlier checkpoint") from err
        raise
