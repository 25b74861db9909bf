"""The public recurrences of the stack, each dispatching to a backend by name and device."""

import torch

from ops.config import BACKENDS
from ops.wkv7 import fla_available, wkv7_chunked, wkv7_fla, wkv7_naive
from ops.wkv7.checks import check_wkv7_inputs


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'fla' on CUDA when importable, else 'chunked'. Other names are checked."""
    if backend not in BACKENDS:
        raise ValueError(f"wkv7: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return "fla" if device.type == "cuda" and fla_available() else "chunked"


def _run(queries: dict, w, k, v, a, b, initial_state, output_final_state, backend, chunk_size):
    check_wkv7_inputs(queries, w, k, v, a, b, initial_state)
    qs = tuple(queries.values())
    name = resolve_backend(backend, k.device)
    if name == "reference":
        return wkv7_naive(qs, w, k, v, a, b, initial_state, output_final_state)
    if name == "chunked":
        return wkv7_chunked(qs, w, k, v, a, b, initial_state, output_final_state, chunk_size)
    return wkv7_fla(qs, w, k, v, a, b, initial_state, output_final_state)


def wkv7(r, w, k, v, a, b, initial_state=None, output_final_state=False, backend="auto",
         chunk_size=32):
    """RWKV-7 state recurrence, per head: S_t = S_{t-1}(diag(exp(w_t)) + a_t b_t^T) + v_t k_t^T,
    y_t = S_t r_t. All inputs `[B, T, H, N]`; w is the log-decay; state `[B, H, N_v, N_k]`.

    Returns (y, final_state or None). RWKV-7 passes a = -kk, b = kk * a.

    Example:
        >>> y, state = wkv7(r, w, k, v, -kk, kk * a, output_final_state=True)
    """
    (y,), state = _run({"r": r}, w, k, v, a, b, initial_state, output_final_state, backend,
                       chunk_size)
    return y, state


def wkv7_sse(r, u, w, k, v, a, b, initial_state=None, output_final_state=False, backend="auto",
             chunk_size=32):
    """WKV-7 read by two queries: y_t = S_t r_t and the Self-State Encoder's z_t = S_t u_t.

    The chunked backend reads u from the chunk-start states of the same pass (no second scan).
    Returns (y, z, final_state or None).

    Example:
        >>> y, z, _ = wkv7_sse(r, u, w, k, v, -kk, kk * a)
    """
    (y, z), state = _run({"r": r, "u": u}, w, k, v, a, b, initial_state, output_final_state,
                         backend, chunk_size)
    return y, z, state


def meta_state_scan(z, w, a, b, initial_state=None, output_final_state=False, backend="auto",
                    chunk_size=32):
    """Meta-state recurrence M_t = M_{t-1}(diag(exp(w_t)) + a_t b_t^T) + z_t z_t^T, read as M_t z_t.

    It shares the TimeMix's transition (w, a, b); key, value and query are all z.

    Example:
        >>> o, _ = meta_state_scan(z, w, -kk, kk * a)
    """
    (o,), state = _run({"z": z}, w, z, z, a, b, initial_state, output_final_state, backend,
                       chunk_size)
    return o, state
