"""Configuration of the recurrence kernels (the `ops` section of a run config)."""

import math
from dataclasses import dataclass

from ops.config_rules import Problem, choice_problems

BACKENDS = ("auto", "reference", "chunked", "fla")

# The chunked backend factors pairwise decays as e^{c_t} e^{-c_s} within a chunk; e^{-c_s} reaches
# e^{|w| L}. With RWKV-7's |w| <= e^{-1/2} = 0.6065, L = 64 gives e^{38.8}, below sqrt(fp32 max) =
# e^{44.4}, so no product of two such factors (forward or backward) can overflow; L = 128 gives
# e^{77.6}, within 1e5 of overflow on its own, and L = 256 overflows (NaN outputs, measured).
MAX_CHUNK_SIZE = 64


def chunk_size_problem(chunk_size: int) -> str | None:
    """Why `chunk_size` is unsafe for the chunked backend, or None when it is fine."""
    if not (isinstance(chunk_size, int) and 1 <= chunk_size <= MAX_CHUNK_SIZE
            and math.log2(chunk_size).is_integer()):
        return (f"chunk_size must be a power of two from 1 to {MAX_CHUNK_SIZE} (16-64 are fast; "
                f"larger chunks overflow fp32 at RWKV-7's strongest decay), got {chunk_size}")
    return None


def loss_chunk_size_problem(loss_chunk_size: int) -> str | None:
    """Why `loss_chunk_size` is invalid, or None when it is fine."""
    if not (isinstance(loss_chunk_size, int) and loss_chunk_size >= 0):
        return (f"loss_chunk_size must be >= 0 tokens (0 = whole-batch logits, 1024 is the "
                f"default), got {loss_chunk_size}")
    return None


@dataclass
class OpsConfig:
    # auto: fla on CUDA when importable, otherwise chunked. reference is the float64 step loop.
    backend: str = "auto"
    # Chunk length of the chunked backend: a power of two up to MAX_CHUNK_SIZE (see above); 32 is
    # fastest on CPU. fla picks its own (64, see ops/rwkv7/fla.py).
    chunk_size: int = 32
    # Tokens per chunk of the fused head + cross-entropy (ops/linear_cross_entropy.py): the loss
    # never holds more than [loss_chunk_size, vocab] fp32 logits (1024 x 50304: 206 MB); 0 = the
    # plain whole-batch logits.
    loss_chunk_size: int = 1024

    def problems(self) -> list[Problem]:
        """This section's own rules; [] when it is valid."""
        problems = choice_problems(self, "ops", {"backend": BACKENDS})
        for name, problem in (("chunk_size", chunk_size_problem(self.chunk_size)),
                              ("loss_chunk_size", loss_chunk_size_problem(self.loss_chunk_size))):
            if problem:
                problems.append((f"ops.{problem}", (f"ops.{name}",)))
        return problems
