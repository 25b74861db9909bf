"""Configuration of the recurrence kernels (the `ops` section of a run config)."""

from dataclasses import dataclass

BACKENDS = ("auto", "reference", "chunked", "fla")


@dataclass
class OpsConfig:
    # auto: fla on CUDA when importable, otherwise chunked. reference is the float64 step loop.
    backend: str = "auto"
    # Chunk length of the chunked backend. 16-64; 32 keeps the per-chunk decay factors far from
    # fp32 overflow for any RWKV-7 decay (|w| <= 0.61 per step) and is fastest on CPU.
    chunk_size: int = 32
