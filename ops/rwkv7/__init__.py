"""WKV-7: one recurrence, three implementations (naive reference, chunked PyTorch, fla Triton)."""

from ops.rwkv7.chunk import wkv7_chunked
from ops.rwkv7.fla import fla_available, wkv7_fla
from ops.rwkv7.naive import wkv7_naive

__all__ = ["wkv7_naive", "wkv7_chunked", "wkv7_fla", "fla_available"]
