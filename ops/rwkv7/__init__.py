"""WKV-7: one recurrence, three implementations (float64 reference, chunked PyTorch, fla Triton)."""

from ops.rwkv7.chunk import wkv7_chunked
from ops.rwkv7.fla import fla_available, wkv7_fla
from ops.rwkv7.reference import wkv7_reference

__all__ = ["wkv7_reference", "wkv7_chunked", "wkv7_fla", "fla_available"]
