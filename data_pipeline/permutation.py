"""A seeded permutation of [0, n) evaluated pointwise in O(1) memory (a Feistel network).

The training order needs `sample = permute(position, n, seed, epoch)` as a pure function so that
any rank can compute any position without a shared index file, resume needs no saved shuffle, and
a Pile-sized epoch (~1.5e8 windows) costs no memory. A balanced Feistel network over the smallest
even bit width covering n is a bijection on [0, 2^bits); "cycle walking" (re-encrypting values
>= n) restricts it to a bijection on [0, n) and needs < 4 rounds of walking on average.
"""

import functools

import numpy as np

_ROUNDS = 6
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
_SCALAR_BELOW = 64           # small batches: Python ints beat numpy's per-call overhead


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a fast, well-distributed 64-bit hash (wrapping uint64 math)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _mix64_int(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=64)
def _round_keys(seed: int, epoch: int) -> tuple[int, ...]:
    base = np.array([(seed * 0x100000001B3 + epoch * _GOLDEN) % (1 << 64)], dtype=np.uint64)
    keys = []
    for round_index in range(_ROUNDS):
        base = _mix64(base + np.uint64(_GOLDEN) + np.uint64(round_index))
        keys.append(int(base[0]))
    return tuple(keys)


def _encrypt(x: np.ndarray, keys: tuple[int, ...], half: int) -> np.ndarray:
    shift, mask = np.uint64(half), np.uint64((1 << half) - 1)
    left, right = x >> shift, x & mask
    for key in keys:
        left, right = right, left ^ (_mix64(right ^ np.uint64(key)) & mask)
    return (left << shift) | right


def _permute_int(x: int, n: int, keys: tuple[int, ...], half: int) -> int:
    mask = (1 << half) - 1
    while True:
        left, right = x >> half, x & mask
        for key in keys:
            left, right = right, left ^ (_mix64_int(right ^ key) & mask)
        x = (left << half) | right
        if x < n:
            return x


def permute(positions, n: int, seed: int, epoch: int) -> np.ndarray:
    """Image of `positions` (ints in [0, n)) under the (seed, epoch) permutation of [0, n).

    Example: `sorted(permute(np.arange(10), 10, seed=1, epoch=0))` == list(range(10)).
    """
    x = np.asarray(positions, dtype=np.int64)
    if n <= 0 or x.size and (x.min() < 0 or x.max() >= n):
        raise ValueError(f"positions must lie in [0, {n})")
    if n == 1:
        return np.zeros_like(x)
    bits = max(8, int(n - 1).bit_length())     # tiny domains would mix poorly
    bits += bits % 2
    keys = _round_keys(seed, epoch)
    if x.size < _SCALAR_BELOW:
        flat = [_permute_int(int(v), n, keys, bits // 2) for v in x.ravel().tolist()]
        return np.array(flat, dtype=np.int64).reshape(x.shape)
    y = _encrypt(x.astype(np.uint64), keys, bits // 2)
    outside = y >= np.uint64(n)
    while outside.any():
        y[outside] = _encrypt(y[outside], keys, bits // 2)
        outside = y >= np.uint64(n)
    return y.astype(np.int64)
